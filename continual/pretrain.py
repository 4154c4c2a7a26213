"""Pretrain the tiny host on the base world and save the shipped checkpoint.

The text backbone (MiniLM) stays frozen; everything else trains. Settings that
converged reliably here are the defaults; the json beside the checkpoint
records them with the measured metrics.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from continual.detect import collate, evaluate_task
from continual.hosts.grounding_dino import GroundingDinoHost
from tasks.task import load_task, list_tasks
from tasks.worlds import WorldSizes

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    steps: int = 12000
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup: int = 300
    clip: float = 0.1
    seed: int = 1
    train_images: int = 6000
    image_size: int = 128
    eval_every: int = 2000


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(out_dir: Path, cfg: PretrainConfig, progress: bool = True) -> dict:
    torch.manual_seed(cfg.seed)
    host = GroundingDinoHost.build_tiny(cfg.image_size, seed=cfg.seed)
    host.model.model.text_backbone.requires_grad_(False)
    base = load_task("synthetic:base", sizes=WorldSizes(train=cfg.train_images, val=200, image_size=cfg.image_size))
    params = [p for p in host.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(base.train, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         generator=generator, collate_fn=lambda items: collate(host, items))
    history, batches, start = [], iter(loader), time.time()
    host.train()
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress)
    for step in bar:
        try:
            pixels, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            pixels, targets = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss, parts = host.loss(pixels, base.phrases, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.2f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            metrics = evaluate_task(host, base.val, base.phrases, progress=False)
            history.append({"step": step + 1, "loss": loss.item(), "mAP": metrics["mAP"], "AP50": metrics["AP50"],
                            "minutes": (time.time() - start) / 60})
            log.info("step %d loss %.3f base mAP %.3f AP50 %.3f", step + 1, loss.item(), metrics["mAP"], metrics["AP50"])
            host.train()
    host.eval()
    record = {"config": asdict(cfg), "minutes": (time.time() - start) / 60, "history": history,
              "base_val": evaluate_task(host, base.val, base.phrases, progress=False), "zero_shot": {}}
    for spec in list_tasks():
        if spec != "synthetic:base":
            task = load_task(spec, sizes=WorldSizes(image_size=cfg.image_size))
            record["zero_shot"][spec] = evaluate_task(host, task.val, task.phrases, progress=False)
    out_dir = Path(out_dir)
    host.save_pretrained(out_dir)
    (out_dir / "pretrain.json").write_text(json.dumps(record, indent=2))
    return record
