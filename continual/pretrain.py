"""Pretrain a tiny host in stages and save the shipped checkpoint.

Grounding DINO (``builtin:tiny-base``). Stage ``shapes`` trains a randomly initialised host on the base world (shapes
on grey); stage ``scenes`` goes on with the same shapes on every world's
backgrounds, after setting the fusion layers' layer-scales to 0.1. Without it
the host's fusion scales its image-side update by about 0.003 (transformers
starts the scales at 1e-4), so prompts that live in the fusion (SDPT) cannot
move the image features, and features trained on grey alone know nothing of
other backgrounds. The text backbone (MiniLM) stays frozen throughout.

Dual encoder (``builtin:tiny-clip``). Stage ``captions`` trains the ViT image
tower, both projections and the logit scale on captioned object crops of
``base-scenes`` (the base shapes on every world's backgrounds): CLIP's
image-to-text contrastive loss, each image against the captions of all twelve
classes, a caption being the mean feature of several sentence templates. The
MiniLM text tower stays frozen: it is the host's only source of language (its
sentence embeddings relate "starfish" to "star" and "fish"), and twelve class
captions would wear that knowledge away; frozen, it also makes novel class
names mean what MiniLM says they mean.

ViLT (``builtin:tiny-vilt``). Stage ``vqa`` trains everything but the MiniLM
word embeddings (frozen: the host's only source of word meaning, as above) on
questions about ``base-scenes`` (tasks.questions), with ViLT's VQA loss over the
base world's answers; the head's rows of the novel worlds' answers stay as
initialised, so novel class names and colours are unknown answers until a
module learns them.

``pretrain.json`` beside the checkpoint records every stage run to make it
(settings, training curve, validation metrics on the stage's world), the
base-world metrics and the zero-shot metrics on every novel world.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from continual import atomic
from continual.config import ConfigError
from continual.loop import evaluate, fit
from continual.faults import crash_point
from continual.hosts.base import build_host, local_folder
from continual.hosts.dual_encoder import DualEncoderHost
from continual.hosts.grounding_dino import GroundingDinoHost
from continual.hosts.vilt import ViltHost
from continual.training import TrainConfig
from tasks.task import load_task
from tasks.vocabulary import PromptSampler
from tasks.worlds import NOVEL_WORLDS, WorldSizes

log = logging.getLogger(__name__)
RECORD = "pretrain.json"


# Caption templates of the dual encoder's pretraining (CLIP-style sentences; the eval default among them).
CAPTION_TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "a {}.", "an image showing a {}.",
                     "a drawing of a {}.", "a photo of the {}."]
HOST_KINDS = {"grounding-dino": ("detection", GroundingDinoHost), "dual-encoder": ("classification", DualEncoderHost),
              "vilt": ("vqa", ViltHost)}


def language_source(host) -> torch.nn.Module:
    """What stays frozen in pretraining: the MiniLM text encoder, or (ViLT) its word embeddings."""
    if isinstance(host, ViltHost):
        return host.model.vilt.embeddings.text_embeddings.word_embeddings
    return host.trunks()["text"].module


@dataclass
class PretrainStage:
    world: str = "base"  # the synthetic world the stage trains on
    train_images: int = 6000
    train: TrainConfig = field(default_factory=TrainConfig)
    fusion_layer_scale: Optional[float] = None  # Grounding DINO: fill both fusion layer-scales with this first
    # Grounding DINO: None prompts with the world's own names; N names the batch's categories in words drawn
    # at each step (tasks.vocabulary.PromptSampler) beside N categories absent from it
    negatives: Optional[int] = None
    attributes: float = 0.0  # with negatives: the share of steps that name colours only or shapes only
    phrase_pooling: Optional[bool] = None  # Grounding DINO: switch GroundingDinoHost.pool_phrases on/off first
    phrase_contrast: float = 0.0  # Grounding DINO: weight of continual.hosts.phrase_contrast in the stage's loss
    templates: list[str] = field(default_factory=lambda: list(CAPTION_TEMPLATES))  # dual encoder: captions


def default_stages() -> dict[str, PretrainStage]:
    """The runs that produced the shipped Grounding DINO checkpoint (shapes: lr 2e-4 with seed 1 reached 0.506)."""
    return {
        "shapes": PretrainStage("base", 6000, TrainConfig(steps=10000, batch_size=8, lr=3e-4, weight_decay=1e-4,
                                                          warmup=300, clip=0.1, seed=2)),
        "scenes": PretrainStage("base-scenes", 3000, TrainConfig(steps=2000, batch_size=8, lr=2e-4,
                                                                 weight_decay=1e-4, warmup=100, clip=0.1, seed=3),
                                fusion_layer_scale=0.1),
    }


def grounding_stages() -> dict[str, PretrainStage]:
    """The grounding recipe: the ``shapes`` recipe's two stages, then the same host taught to read words.

    Stage ``words``: 30 colour-shape categories (6 combinations held out), each named at every step by colour
    and shape words drawn from tasks.vocabulary, with absent categories named too (negatives), so the host
    must read both words of a phrase; half the steps name colours only or shapes only; each phrase's words
    pooled (GroundingDinoHost.pool_phrases); a cross-entropy over the prompt's phrases for each matched query
    beside the focal loss (continual.hosts.phrase_contrast). Stage ``word-scenes``: the same on every world's
    backgrounds.
    From random weights the words stages alone left a shape detector after 6,000 steps; the ``shapes`` host
    already reads colour from its queries. Not yet a working recipe (docs/results/grounding-probe.md: "Does the host read its prompt's
    words?").
    """
    # 4 images a batch: with 6 negatives a step names 14.5 categories on average, one 64-token prompt (8 images
    # named 20.3, 1.85 prompts, each a whole forward).
    return {
        **default_stages(),
        "words": PretrainStage("grounding", 6000, TrainConfig(steps=10000, batch_size=4, lr=1.5e-4,
                                                              weight_decay=1e-4, warmup=600, clip=0.1, seed=4),
                               negatives=6, attributes=0.5, phrase_pooling=True, phrase_contrast=1.0),
        "word-scenes": PretrainStage("grounding-scenes", 3000, TrainConfig(steps=2000, batch_size=4, lr=1e-4,
                                                                           weight_decay=1e-4, warmup=200, clip=0.1,
                                                                           seed=5), negatives=6, attributes=0.5,
                                      phrase_contrast=1.0),
    }


RECIPES = {"shapes": default_stages, "grounding": grounding_stages}  # Grounding DINO's pretraining recipes


def dual_encoder_stages() -> dict[str, PretrainStage]:
    """The run that produced the shipped tiny-clip checkpoint."""
    return {"captions": PretrainStage("base-scenes", 3000, TrainConfig(steps=1500, batch_size=64, lr=1e-3,
                                                                       weight_decay=0.05, warmup=100, clip=1.0,
                                                                       seed=0))}


def vilt_stages() -> dict[str, PretrainStage]:
    """The run that produced the shipped tiny-vilt checkpoint."""
    return {"vqa": PretrainStage("base-scenes", 6000, TrainConfig(steps=4000, batch_size=32, lr=5e-4,
                                                                  weight_decay=0.01, warmup=200, clip=1.0, seed=0))}


@dataclass
class PretrainConfig:
    host: str = "grounding-dino"  # or dual-encoder, vilt
    stages: dict[str, PretrainStage] = field(default_factory=default_stages)
    image_size: int = 128  # of the synthetic worlds' images
    eval_every: int = 1000  # steps between validations on the stage's world (0: at its end only)
    val_images: int = 200
    report_images: int = 100  # validation images per world for pretrain.json's base and zero-shot figures

    @classmethod
    def for_host(cls, host: str, recipe: str = "shapes") -> "PretrainConfig":
        if host not in HOST_KINDS:
            raise ConfigError(f"pretrain: unknown host {host!r}; choose from {', '.join(HOST_KINDS)}")
        if host == "dual-encoder":
            return cls(host=host, stages=dual_encoder_stages(), eval_every=500, val_images=100)
        if host == "vilt":
            return cls(host=host, stages=vilt_stages(), eval_every=1000, val_images=100)
        if recipe not in RECIPES:
            raise ConfigError(f"pretrain: unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
        return cls(host=host, stages=RECIPES[recipe]())


def set_fusion_layer_scale(host: GroundingDinoHost, value: float) -> None:
    """Fill the image- and text-side layer-scales of every fusion layer."""
    with torch.no_grad():
        for layer in host.model.model.encoder.layers:
            layer.fusion_layer.vision_param.fill_(value)
            layer.fusion_layer.text_param.fill_(value)


def earlier_stages(source: str) -> list[dict]:
    """The stage records of the checkpoint we start from (none for a host without a pretrain.json)."""
    folder = local_folder(source)
    if folder is None or not (folder / RECORD).is_file():
        return []
    return json.loads((folder / RECORD).read_text()).get("stages", [])


def pretrain(out_dir: Path, cfg: PretrainConfig, start: str | None = None, only: list[str] | None = None,
             progress: bool = True, resume: bool = False) -> dict:
    """Run the stages (all, or ``only`` those named, in config order) and save the host to ``out_dir``.

    ``start``: a checkpoint to go on from (its stage records are kept); None
    builds a randomly initialised tiny host. ``resume``: go on from the state
    the last validation of an interrupted run with the same settings saved,
    on the same batches (without one, start afresh).
    """
    names = list(cfg.stages) if only is None else only
    unknown = [n for n in names if n not in cfg.stages]
    if unknown or not names:
        raise ConfigError(f"pretrain: unknown stage(s) {unknown or names}; stages are {', '.join(cfg.stages)}")
    names = [n for n in cfg.stages if n in names]
    first = cfg.stages[names[0]]
    kind, host_cls = HOST_KINDS[cfg.host]
    if start:
        host = build_host(start)
        if not isinstance(host, host_cls):
            raise ConfigError(f"pretrain --from {start}: a {host.kind} host, not a {cfg.host}")
    elif host_cls is GroundingDinoHost:
        host = host_cls.build_tiny(cfg.image_size, seed=first.train.seed)
    else:
        host = host_cls.build_tiny(seed=first.train.seed)
    language_source(host).requires_grad_(False)  # see the module docstring
    state = RunState(snapshot_folder(out_dir), json.dumps({"config": asdict(cfg), "from": start, "stages": names},
                                                          sort_keys=True))
    saved = state.load() if resume else None
    if resume and saved is None:
        log.info("nothing to resume in %s: starting afresh", state.path)
    if saved is not None:
        host.load_state_dict(saved["params"], strict=False)  # the trained tensors; the rest is as built
        state.finished = saved["finished"]
        log.info("resuming stage %s at step %d", saved["stage"], saved["step"])
    record = {"host": cfg.host, "started_from": start, "stages": earlier_stages(start) if start else []}
    for name in names:
        if cfg.stages[name].phrase_pooling is not None:  # a config switch, not a tensor: set even where resumed
            host.set_phrase_pooling(cfg.stages[name].phrase_pooling)
        if name in [s["name"] for s in state.finished]:
            continue
        partial = saved if saved is not None and saved["stage"] == name else None
        state.finished.append(run_stage(host, name, cfg.stages[name], cfg, progress, state, partial))
    record["stages"] += state.finished
    sizes = WorldSizes(val=cfg.report_images, image_size=cfg.image_size)
    base = load_task("synthetic:base", sizes=sizes, kind=kind)
    record["base_val"] = evaluate(host, base, progress=False)
    record["zero_shot"] = {}
    for world in NOVEL_WORLDS:
        task = load_task(f"synthetic:{world}", sizes=sizes, kind=kind)
        record["zero_shot"][f"synthetic:{world}"] = evaluate(host, task, progress=False)
    with atomic.replaced_folder(out_dir) as tmp:
        host.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def snapshot_folder(out_dir: Path) -> Path:
    """Where the host is saved at each validation, beside the checkpoint (``STAGE-STEP``), with the state a
    resumed run goes on from: a long run can be probed while it goes, and one cut short resumed."""
    return out_dir.with_name(out_dir.name + "-snapshots")


@dataclass
class RunState:
    """The state an interrupted run resumes from (``state.pt`` among the snapshots), rewritten at each
    validation: the trained tensors, the optimizer, the RNG, the prompt sampler, the curve so far and the
    records of the stages finished; ``settings`` (the whole config, start and stages) must match to resume.
    Read back with ``torch.load(weights_only=True)``: tensors and plain containers only."""

    folder: Path
    settings: str
    finished: list[dict] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder / "state.pt"

    def save(self, host, stage: str, step: int, optimizer, sampler, losses: list[float], history: list[dict],
             val: dict, minutes: float) -> None:
        atomic.write_torch(self.path, {
            "settings": self.settings, "finished": self.finished, "stage": stage, "step": step,
            "params": {n: p.detach().cpu().clone() for n, p in host.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
            "sampler": sampler.state() if sampler else None, "losses": list(losses), "history": history,
            "val": val, "minutes": minutes})

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        saved = torch.load(self.path, weights_only=True)
        if saved["settings"] != self.settings:
            raise ConfigError(f"pretrain --resume: {self.path} was saved by a run with other settings; resume with "
                              "the same command line, or start afresh without --resume")
        return saved


def run_stage(host, name: str, stage: PretrainStage, cfg: PretrainConfig, progress: bool, state: RunState,
              resume: dict | None = None) -> dict:
    """One stage; ``resume``: the saved state of this stage to go on from."""
    kind = HOST_KINDS[cfg.host][0]
    task = load_task(f"synthetic:{stage.world}", sizes=WorldSizes(train=stage.train_images, val=cfg.val_images,
                                                                  image_size=cfg.image_size), kind=kind)
    if kind == "classification":
        task.template = tuple(stage.templates)  # each caption: the mean feature of its sentences
    sampler = None
    if stage.negatives is not None:
        sampler = PromptSampler(task.phrases, stage.negatives, seed=stage.train.seed, attributes=stage.attributes)
        task.training_prompts = sampler
    if isinstance(host, GroundingDinoHost):
        host.phrase_contrast = stage.phrase_contrast
    if stage.fusion_layer_scale is not None and resume is None:
        set_fusion_layer_scale(host, stage.fusion_layer_scale)
    params = [p for p in host.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.train.lr, weight_decay=stage.train.weight_decay)
    history, last, earlier = [], {}, 0.0  # earlier: minutes of an interrupted run's part of the stage
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        if sampler:
            sampler.load_state(resume["sampler"])
        history, last, earlier = list(resume["history"]), dict(resume["val"]), resume["minutes"]
    start = time.time()

    def validate(step: int, losses: list[float]) -> None:  # every cfg.eval_every steps and after the last
        if not ((cfg.eval_every and step % cfg.eval_every == 0) or step == stage.train.steps):
            return
        metrics = evaluate(host, task, progress=False)
        last.update(metrics)
        primary, minutes = task.metric, earlier + (time.time() - start) / 60
        history.append({"step": step, "loss": losses[-1], primary: metrics[primary], "minutes": minutes})
        log.info("%s step %d loss %.3f %s %s %.3f", name, step, losses[-1], stage.world, primary, metrics[primary])
        with atomic.replaced_folder(state.folder / f"{name}-{step}") as tmp:
            host.save_pretrained(tmp)
        state.save(host, name, step, optimizer, sampler, losses, history, last, minutes)
        crash_point("pretrain-validation")

    log.info("stage %s: %d steps on synthetic:%s", name, stage.train.steps, stage.world)
    if resume is None:
        torch.manual_seed(stage.train.seed)
    fit(host, task, stage.train, optimizer, resume=resume, progress=progress, label=f"pretrain {name}",
        after_step=validate)
    host.eval()
    minutes = earlier + (time.time() - start) / 60
    log.info("stage %s done in %.1f min: %s val %s %.3f", name, minutes, stage.world, task.metric, last[task.metric])
    return {"name": name, **asdict(stage), "minutes": minutes, "history": history, "val": dict(last)}
