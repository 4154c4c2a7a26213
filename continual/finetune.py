"""Train one PEFT module on one task, on top of a host and any earlier modules.

The single-task building block of the stream engine, and what
``continual train`` runs: evaluate before, train only the new module, check
that the host and the earlier modules did not move, evaluate after, save.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from continual.detect import evaluate_task
from continual.training import TrainConfig, train
from prompts import Stack, build_module, load_module, save_module
from tasks.task import DetectionTask

log = logging.getLogger(__name__)


class IntegrityError(RuntimeError):
    """A frozen tensor (host or earlier module) changed while a new module trained."""


@dataclass
class FinetuneResult:
    before: dict
    after: dict
    losses: list[float]
    seconds: float
    module_dir: Path | None


def finetune(host, task: DetectionTask, method: str, method_config: dict | None, train_cfg: TrainConfig,
             below: list[Path] = (), out_dir: Path | None = None, progress: bool = True) -> FinetuneResult:
    stack = Stack(host)
    for folder in below:
        stack.push(load_module(folder, host))
    try:
        before = evaluate_task(host, task.val, task.phrases, progress=progress)
        module = stack.push(build_module(method, method_config, task=task.name))
        frozen = stack.frozen_hashes(except_module=module) if module.stackable else None
        params = stack.train_only(module)
        start = time.time()
        losses = train(host, params, task.train, task.phrases, train_cfg, progress, desc=f"{method} on {task.name}")
        seconds = time.time() - start
        if frozen is not None and stack.frozen_hashes(except_module=module) != frozen:
            raise IntegrityError(f"training {method} on {task.name} changed the frozen host or an earlier module")
        after = evaluate_task(host, task.val, task.phrases, progress=progress)
        saved = save_module(module, out_dir, host, metrics=after, train=vars(train_cfg)) if out_dir else None
        return FinetuneResult(before, after, losses, seconds, saved)
    finally:
        stack.clear()
