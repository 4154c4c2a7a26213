"""The detection training loop shared by pretraining and PEFT module training.

AdamW, linear warm-up then cosine decay to 5% of the peak, gradient clipping,
one prompt (the task's phrases) for every batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from continual.detect import collate


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8
    lr: Optional[float] = None  # None: the method's default_lr
    weight_decay: float = 1e-4
    warmup: int = 30
    clip: float = 1.0
    seed: int = 0


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(host, data, cfg: TrainConfig):
    """Endless shuffled batches (pixel_values, targets), reshuffled every epoch from the seed."""
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=len(data) >= cfg.batch_size,
                                         generator=generator, collate_fn=lambda items: collate(host, items))
    while True:
        yield from loader


def train(host, params: list[torch.nn.Parameter], data, phrases, cfg: TrainConfig, progress: bool = True,
          every: int = 0, callback: Callable[[int, float], None] | None = None, desc: str = "train") -> list[float]:
    """Train ``params`` on ``data`` for ``cfg.steps`` steps; returns the loss per step.

    ``callback(step, loss)`` runs after every ``every``-th step and after the last.
    """
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    host.train()
    stream = batches(host, data, cfg)
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        pixels, targets = next(stream)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss, _ = host.loss(pixels, phrases, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.2f}")
        if callback and ((every and (step + 1) % every == 0) or step + 1 == cfg.steps):
            callback(step + 1, losses[-1])
            host.train()
    host.eval()
    return losses
