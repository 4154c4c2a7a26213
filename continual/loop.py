"""The two loops every run uses: ``train`` a module on top of a stack, ``evaluate`` a task under a policy.

Streams, studies, few-shot grids and pretraining all call them; what a call
produced is what it returns. ``fit`` is the optimizer-step loop underneath
``train`` (pretraining calls it with the host's own parameters).

Randomness: ``train`` seeds the RNG with ``config.seed`` before the module is
built (its initialisation), the data order is the sampler's own, and the RNG
state saved with a checkpoint is put back before the first step taken after
it, so a resumed step continues bit for bit. ``evaluate`` draws nothing from
the RNG.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from continual import atomic, distributed
from continual.errors import IntegrityError, NonFiniteError
from continual.faults import crash_point
from continual.hosts.base import Batch, Host
from continual.loading import PixelCache, eval_loader, train_loader
from continual.training import TrainConfig, lr_at
from continual.trunk_cache import TrunkCache
from prompts import PeftModule, Stack


@dataclass
class TrainRecord:
    """What training produced besides the weights themselves."""

    losses: list[float] = field(default_factory=list)  # per optimizer step (a resumed step's earlier ones too)
    step_seconds: list[float] = field(default_factory=list)  # wall time per step taken here, data loading included
    model_seconds: float = 0.0  # forward + backward + update
    trunk_cache: dict = field(default_factory=dict)  # per cached trunk: hits, misses, entries
    config: TrainConfig | None = None  # the settings it trained with (learning rate resolved)


class ModelClock:
    """Seconds spent in the model's own work (forward, backward, update), summed over calls."""

    def __init__(self):
        self.seconds = 0.0

    @contextlib.contextmanager
    def timing(self):
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - tick


class StepCheckpoint:
    """The mid-step checkpoint of one stream step (``key``: its training's identity): every ``every`` steps
    and at its end, one file written atomically with the module's tensors, its optimizer, the step, the RNG
    state and the losses so far. Read back with ``torch.load(weights_only=True)``: tensors and plain
    containers only, never arbitrary pickled objects. A checkpoint of another step, or of this step under
    settings changed since, is not used."""

    def __init__(self, path: str | Path, index: int, key: str, every: int):
        self.path, self.index, self.key, self.every = Path(path), index, key, every

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, weights_only=True)
        return state if state["index"] == self.index and state.get("key") == self.key else None

    def due(self, step: int, steps: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step < steps

    def save(self, step: int, module: PeftModule, optimizer: torch.optim.Optimizer, losses: list[float]) -> None:
        atomic.write_torch(self.path, {
            "index": self.index, "key": self.key, "step": step,
            "module": {k: v.detach().cpu().clone() for k, v in module.module_state().items()},
            "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "losses": list(losses)})


def default_progress() -> bool:
    """Progress bars on a terminal, not in CI or a log file."""
    return not os.environ.get("CI") and sys.stderr.isatty()


def resolved(config: TrainConfig, module: PeftModule) -> TrainConfig:
    """``config`` with the method's default learning rate where it gives none."""
    return dataclasses.replace(config, lr=config.lr or module.default_lr)


def train(stack: Stack, module: PeftModule, task, config: TrainConfig, *, checkpoint: StepCheckpoint | None = None,
          feature_cache: bool = True, feature_cache_mb: int = 4096, pixels: PixelCache | None = None,
          progress: bool | None = None, clock: ModelClock | None = None, precision: str = "auto",
          workers: int = 0) -> TrainRecord:
    """Train ``module`` alone on ``task``'s training split, on top of everything on ``stack``.

    The module is pushed on the stack (if it is not there) and initialised with ``config.seed``; the host and
    every other module are frozen and hashed before and after (IntegrityError if any moved). Frozen trunks
    that the module does not act inside are cached (``feature_cache``). With ``checkpoint``, training starts
    from the step's checkpoint when there is one and saves it every ``checkpoint.every`` steps and at the end.
    The host is left in the mode it was found in. ``precision``: see ``autocast``; ``workers``: data loading
    processes (the batches are the same with any number).

        record = train(stack, build_module("sdpt", task=aquarium), aquarium, TrainConfig(steps=100))
    """
    host, config = stack.host, resolved(config, module)
    device = host.pixel_mean.device
    # train mode while modules train (dropout where the host has it; frozen trunks run in eval mode, TrunkCache)
    with mode(host, training=True):
        torch.manual_seed(config.seed)  # the module's initialisation
        module.phrases = tuple(task.phrases)  # what policy `route` matches prompts to
        if module not in stack.modules:
            stack.push(module)
        frozen = stack.frozen_hashes(except_module=module) if module.stackable else None
        module.prepare(task)
        params = stack.train_only(module)
        module.to(device)
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        resume = checkpoint.load() if checkpoint else None
        if resume is not None:
            module.load_module_state(resume["module"])
            optimizer.load_state_dict(resume["optimizer"])
        distributed.broadcast_parameters(params)  # one initialisation on every rank

        def after_step(step: int, losses: list[float]) -> None:
            if checkpoint and checkpoint.due(step, config.steps):
                checkpoint.save(step, module, optimizer, losses)

        with TrunkCache(host.trunks(), stack.modules, feature_cache, feature_cache_mb) as cache:
            record = fit(host, task, config, optimizer, objective=module.objective, resume=resume, pixels=pixels,
                         progress=progress, label=f"{task.name} ({module.method})", after_step=after_step,
                         clock=clock, precision=precision, workers=workers)
            record.trunk_cache = cache.stats()
    module.requires_grad_(False)
    assert_frozen(stack, module, frozen)
    if checkpoint:
        checkpoint.save(config.steps, module, optimizer, record.losses)
    record.config = config
    return record


def assert_frozen(stack: Stack, module: PeftModule, before: dict | None) -> None:
    """IntegrityError unless the host and every module but ``module`` hash as they did ``before`` it trained
    (``stack.frozen_hashes``; None: a module that changes the host's own weights, not checked)."""
    if before is None:
        return
    moved = sorted(k for k, v in stack.frozen_hashes(except_module=module).items() if before.get(k) != v)
    if moved:
        raise IntegrityError(f"training {module.method} for {module.task} changed frozen tensors: {moved} "
                             "(the host and earlier modules must stay bit-identical)")


def fit(host, task, config: TrainConfig, optimizer: torch.optim.Optimizer, *, objective: Callable | None = None,
        resume: dict | None = None, pixels: PixelCache | None = None, progress: bool | None = None, label: str = "train",
        after_step: Callable[[int, list[float]], None] | None = None, clock: ModelClock | None = None,
        precision: str = "auto", workers: int = 0) -> TrainRecord:
    """``config.steps`` optimizer steps over what ``optimizer`` holds, on ``task``'s training split.

    Each step: the host's task loss on a batch, the trained part's ``objective(loss, progress)`` on it,
    backward, gradients averaged over ranks, the warm-up + cosine learning rate, clipping, the update.
    A loss, gradient or weight that is not finite stops training before it reaches a checkpoint
    (NonFiniteError). ``resume``: {step, rng, losses} saved after a step; training goes on from there on
    the same batches. ``after_step(step, losses)`` runs after every step (checkpoints, validation).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start = resume["step"] if resume else 0
    record = TrainRecord(losses=list(resume["losses"]) if resume else [])
    clock = clock or ModelClock()
    before = clock.seconds
    pixels = pixels or PixelCache(host.to_pixels)
    device = host.pixel_mean.device
    host.train()
    batches = iter(train_loader(task.train, pixels, config.batch_size, config.steps, config.seed, start, workers,
                                pin_memory=device.type == "cuda"))
    if resume is not None:  # after the loader drew its seed, as the uninterrupted run had at this step
        torch.set_rng_state(resume["rng"])
    bar = tqdm(total=config.steps, initial=start, desc=label, unit="step", leave=False,
               disable=not (default_progress() if progress is None else progress))
    last = time.perf_counter()
    for step in range(start, config.steps):
        images, targets = next(batches)
        targets = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]
        with clock.timing(), stopped_at(task, step, config):
            optimizer.zero_grad()
            with autocast(device, precision):
                loss, _ = host.loss(Batch.of(task, host.pixel_batch(list(images)), targets, train=True))
            if objective is not None:  # the trained method's own objective (DPT's auxiliary terms)
                loss = objective(loss, step / config.steps)
            loss.backward()
            loss = distributed.average_gradients(params, loss)
            check_finite("the loss", loss)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            clip_gradients(params, config.clip)
            update(optimizer)
            check_finite("the weights", params)
            record.losses.append(loss.item())  # .item() syncs, so the timing is honest on CUDA too
        now = time.perf_counter()
        record.step_seconds.append(now - last)
        last = now
        bar.update()
        bar.set_postfix(loss=f"{record.losses[-1]:.2f}")
        if after_step:
            after_step(step + 1, record.losses)
        crash_point("train-step")
    bar.close()
    record.model_seconds = clock.seconds - before
    return record


def check_finite(what: str, value: torch.Tensor | list[torch.Tensor]) -> None:
    """NonFiniteError naming ``what`` unless every element of ``value`` (a tensor or a list of them) is finite."""
    tensors = value if isinstance(value, list) else [value]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):  # one sync, however many tensors
        shown = f" ({value.item():g})" if torch.is_tensor(value) and value.numel() == 1 else ""
        raise NonFiniteError(f"{what} went non-finite{shown}")


def clip_gradients(params: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Scale the gradients to a total 2-norm of at most ``clip``, as ``torch.nn.utils.clip_grad_norm_`` does
    (the same bits); returns the norm. Finite gradients whose norm overflows float32 (elements near 1e19 and
    above: a deep host with random weights gives them) are measured in float64, so clipping tames them as it
    tames smaller ones; a non-finite gradient is a NonFiniteError."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if not torch.isfinite(norm):
        check_finite("the gradients", grads)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64)
                                                     for g in grads])).to(norm.dtype)
        check_finite("the gradients' norm", norm)
    torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
    return norm


def update(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``; an update too large for float32 (AdamW with a huge rate) is a divergence."""
    try:
        optimizer.step()
    except RuntimeError as err:
        if "overflow" not in str(err):
            raise
        raise NonFiniteError(f"the update overflowed float32 ({err})") from err


@contextlib.contextmanager
def stopped_at(task, step: int, config: TrainConfig):
    """A divergence inside a training step, told with the task, the step and the rate; training stops before
    the step reaches a checkpoint."""
    try:
        yield
    except NonFiniteError as err:
        raise NonFiniteError(f"task {task.name!r}: {err} at training step {step + 1} of {config.steps} (lr "
                             f"{config.lr:g}); stopped before it reached a checkpoint: lower train.lr (or check the "
                             "task's data)") from err


def autocast(device: torch.device, precision: str = "auto"):
    """The forward's precision: ``bf16`` autocast (the trained weights stay fp32), ``fp32``, or ``auto``
    (bf16 on CUDA, fp32 elsewhere)."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@contextlib.contextmanager
def mode(*modules: nn.Module, training: bool):
    """Every submodule in train (or eval) mode; each put back in its own mode after."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.train(training)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@torch.no_grad()
def evaluate(stack: Stack | Host, task, policy: str = "all", *, batch_size: int = 16,
             pixels: PixelCache | None = None, progress: bool | None = None, clock: ModelClock | None = None,
             precision: str = "auto", workers: int = 0) -> dict:
    """Every statistic of ``task``'s evaluator on its validation split, with the stack's modules switched by
    ``policy`` (``all``, ``own`` or ``route``) for this task and its phrases; the stack is left as found.
    A host alone is evaluated as it is.

        evaluate(stack, base, "own")["mAP"]
    """
    stack = stack if isinstance(stack, Stack) else Stack(stack)
    host = stack.host
    device = host.pixel_mean.device
    pixels = pixels or PixelCache(host.to_pixels)
    clock = clock or ModelClock()
    seen = []  # (target, prediction) per image, on the CPU
    loader = eval_loader(task.val, pixels, batch_size, workers, pin_memory=device.type == "cuda")
    with stack.using(policy, task.name, task.phrases), mode(host, *stack.modules, training=False):
        for images, targets in tqdm(loader, desc=f"eval {task.name}", unit="batch", leave=False,
                                    disable=not (default_progress() if progress is None else progress)):
            try:
                with clock.timing(), autocast(device, precision):
                    predictions = host.predict(Batch.of(task, host.pixel_batch(list(images)), targets, train=False))
                predictions = [{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in p.items()}
                               for p in predictions]
                check_finite("the predictions", [v for p in predictions for v in p.values() if v.is_floating_point()])
            except NonFiniteError as err:
                raise NonFiniteError(f"task {task.name!r}: evaluating, {err}: the modules on the host diverged "
                                     "(lower train.lr)") from err
            seen += zip(targets, predictions)
            crash_point("eval-batch")

    def compute(items):
        evaluator = task.evaluator()
        if items:
            evaluator.process(*zip(*items))
        return evaluator.evaluate()

    return distributed.on_main(seen, compute)
