"""The few-shot protocol (CoOp, DPT): every method trained per (task, shots, seed), the task's primary metric on
its validation split, one table of means with 95% intervals over seeds and a plot of the metric against shots.

    continual fewshot configs/fewshot.yaml [key=value ...] [--resume | --overwrite]

The K training images per class are drawn with the seed from the task's
training split (the validation split stays whole and the same); the seed also
sets the data order and the module's initialisation. A shot count of null
trains on the whole training split: the seeds then vary only the order and
the initialisation (the APT study's VQA tasks, which have no classes to draw
shots from, use only that). Each finished cell is
written at once to ``fewshot.json``, so ``--resume`` continues a grid where it
stopped, also with a config that adds shot counts, seeds, tasks or methods (only
the new cells run). The method ``none`` is the zero-shot row (the same for every shot
count and seed, so evaluated once per task).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from continual import atomic
from continual.config import (NO_MODULE, ConfigError, DataConfig, RunConfig, StepConfig, TaskConfig, check_positive,
                              check_train, import_modules, load_structured, step_train_config, to_yaml, validate)
from continual.errors import RunError
from continual.loading import PixelCache
from continual.loop import evaluate, train
from continual.run_folder import CONFIG, FEWSHOT, RunFolder
from continual.training import TrainConfig
from evaluation.fewshot import fewshot_outputs
from tasks.kinds import TASK_KINDS

log = logging.getLogger(__name__)



@dataclass
class MethodSpec:
    """One row of the table: a method with its config and training overrides (``none``: zero-shot)."""

    method: str = "???"  # a registered method, or none (zero-shot)
    config: dict[str, Any] = field(default_factory=dict)  # the method's config
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the grid's `train` (lr, steps, ...)


@dataclass
class FewshotConfig:
    name: str = "fewshot"  # the grid's name (and its default folder)
    run_dir: str = "runs/${name}"  # where fewshot.json, the report and the plot go
    host: str = "builtin:tiny-clip"  # builtin:NAME, a save_pretrained folder or a Hugging Face id
    device: str = "auto"  # auto: cuda when present
    shots: list[Optional[int]] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # null: the whole split
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # each cell once per seed (shots drawn, init, order)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)  # tasks of one kind (their own `shots` unused)
    methods: dict[str, MethodSpec] = field(default_factory=dict)  # row label -> method
    data: DataConfig = field(default_factory=DataConfig)  # synthetic worlds' sizes: the pool the shots come from
    train: TrainConfig = field(default_factory=TrainConfig)  # how each cell's module trains
    focus: Optional[str] = None  # a method the report compares with every other row, seed by seed (paired)
    eval_batch_size: int = 64  # images per evaluation batch
    feature_cache: bool = True  # cache the outputs of frozen trunks the trained module does not act inside
    feature_cache_mb: int = 2048  # memory the cache may hold
    imports: list[str] = field(default_factory=list)  # user modules that register methods or hosts


def load_fewshot_config(path: str | Path, overrides=()) -> FewshotConfig:
    cfg: FewshotConfig = load_structured(path, overrides, FewshotConfig)
    import_modules(cfg.imports, Path(path).parent, str(path))
    validate_fewshot(cfg, str(path))
    return cfg


def validate_fewshot(cfg: FewshotConfig, where: str) -> None:
    """What can be checked before anything loads: lists, tasks, methods, their configs and sites."""
    if not cfg.shots or any(k is not None and k < 1 for k in cfg.shots) or len(set(cfg.shots)) != len(cfg.shots):
        raise ConfigError(f"{where}: shots must be a non-empty list of distinct positive counts or null (the whole "
                          f"split), got {cfg.shots}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list without repeats, got {cfg.seeds}")
    if not cfg.tasks or not cfg.methods:
        raise ConfigError(f"{where}: a few-shot grid needs `tasks` and `methods`")
    if cfg.focus is not None and cfg.focus not in cfg.methods:
        raise ConfigError(f"{where}: focus: {cfg.focus!r} is not one of the methods {sorted(cfg.methods)}")
    check_positive(where, {"eval_batch_size": cfg.eval_batch_size, "feature_cache_mb": cfg.feature_cache_mb},
              allow_zero=("feature_cache_mb",))
    check_train(where, "train.", cfg.train)
    kinds = {task.kind for task in cfg.tasks.values()}
    if len(kinds) > 1:
        raise ConfigError(f"{where}: tasks: one table needs one metric, so one task kind; got {sorted(kinds)}")
    for name, task in cfg.tasks.items():
        if task.kind in TASK_KINDS and not TASK_KINDS[task.kind].takes_shots and any(k is not None for k in cfg.shots):
            raise ConfigError(f"{where}: shots: K images per class needs classification tasks; tasks.{name} is "
                              f"{task.kind!r}, so use shots: [null] (the whole training split)")
        if task.shots is not None:
            raise ConfigError(f"{where}: tasks.{name}.shots: the grid's `shots` list sets it; leave it out")
    # Each method checked as a one-step stream of the engine's schema (methods, configs, sites, train overrides).
    for label, spec in cfg.methods.items():
        first = next(iter(cfg.tasks))
        probe = RunConfig(name=label, host=cfg.host, device=cfg.device, data=cfg.data, train=cfg.train,
                          tasks={first: cfg.tasks[first]},
                          stream=[StepConfig(task=first, method=spec.method, config=spec.config, train=spec.train)])
        try:
            validate(probe, where)
        except ConfigError as err:
            raise ConfigError(str(err).replace("stream.0.", f"methods.{label}.")) from err


def _train_config(cfg: FewshotConfig, label: str, spec: MethodSpec, seed: int) -> TrainConfig:
    from prompts import METHODS

    train = step_train_config(cfg, StepConfig(task=label, method=spec.method, train=spec.train))
    train.seed = seed
    train.lr = train.lr or METHODS[spec.method].default_lr
    return train


GROWING = ("shots", "seeds", "tasks", "methods")  # the grid's axes: a resumed grid may add to each
REPORTING = ("run_dir", "focus")  # keys that move no cell


def grows(previous_text: str, config_text: str) -> bool:
    """Whether the grid of ``config_text`` holds every cell of ``previous_text``'s, computed the same way:
    every other key equal, each axis keeping its entries (a method or task unchanged) and perhaps adding some.
    Each cell is seeded on its own, so the added cells do not move the others."""
    before, after = (OmegaConf.to_container(OmegaConf.create(t)) for t in (previous_text, config_text))
    if any(before.get(k) != after.get(k) for k in (set(before) | set(after)) - {*REPORTING, *GROWING}):
        return False
    kept_lists = all(set(before[k]) <= set(after[k]) for k in ("shots", "seeds"))
    return kept_lists and all(after[k].get(name) == entry for k in ("tasks", "methods")
                              for name, entry in before[k].items())


def _cell_key(cell: dict) -> tuple:
    return cell["task"], cell["shots"], cell["seed"], cell["method"]


def run_fewshot(cfg: FewshotConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Every (task, shots, seed, method) cell not yet in the run folder; then the table and the plot."""
    from continual.streams import open_task, resolve_device
    from continual.hosts.base import build_host
    from prompts import Stack

    folder = RunFolder(cfg.run_dir)
    previous = folder.prepare(resume, overwrite)
    if previous is not None and not grows(previous, to_yaml(cfg)):  # cells of one grid, one config
        raise RunError(f"{folder} holds a grid of another config ({folder / CONFIG}); --resume needs the "
                       "same config or one that only adds shots, seeds, tasks or methods; --overwrite starts over")
    folder.record_config(to_yaml(cfg), previous)
    results_path = folder / FEWSHOT
    cells = json.loads(results_path.read_text())["cells"] if resume and results_path.is_file() else []
    done = {_cell_key(c) for c in cells}
    host = build_host(cfg.host).to(resolve_device(cfg.device))
    stack, pixels = Stack(host), PixelCache(host.to_pixels)
    total = len(cfg.tasks) * len(cfg.shots) * len(cfg.seeds) * len(cfg.methods)
    bar = tqdm(total=total, initial=len(done), desc="few-shot cells", disable=not progress)
    for name, spec in cfg.tasks.items():
        task = open_task(name, spec, cfg.data, host)
        zero_shot = next((c["metrics"] for c in cells if c["task"] == name and c["method"] == NO_MODULE), None)
        for shots in cfg.shots:
            for seed in cfg.seeds:
                train_split = task.train.few_shot(shots, seed)[0] if shots is not None else task.train
                few = dataclasses.replace(task, train=train_split,
                                          record={**task.record, "shots": shots, "shot_seed": seed})
                for label, method in cfg.methods.items():
                    key = (name, shots, seed, label)
                    if key in done:
                        continue
                    cell = {"task": name, "shots": shots, "seed": seed, "method": label,
                            "method_name": method.method, "train_items": len(train_split)}
                    if method.method == NO_MODULE:
                        zero_shot = zero_shot or evaluate(stack, task, batch_size=cfg.eval_batch_size,
                                                          pixels=pixels, progress=False)
                        cell.update(metrics=zero_shot, train_seconds=0.0)
                    else:
                        train_cfg = _train_config(cfg, label, method, seed)
                        cell.update(_train_and_evaluate(stack, few, method, train_cfg, cfg, pixels))
                    log.info("[%s] %s, %s shot(s), seed %d: %s %s %.3f", cfg.name, name, shots or "all", seed,
                             label, task.metric, cell["metrics"][task.metric])
                    cells.append(cell)
                    done.add(key)
                    atomic.write_json(results_path, _results(cfg, host.source, task.metric, cells))
                    bar.update()
    bar.close()
    results = _results(cfg, host.source, task.metric, cells)
    atomic.write_json(results_path, results)
    atomic.write_files(folder.path, fewshot_outputs(results, list(cfg.methods), list(cfg.shots)))
    return folder.path


def _results(cfg: FewshotConfig, host: str, metric: str, cells: list[dict]) -> dict:
    """fewshot.json: the cells so far and what the report needs to read them."""
    return {"name": cfg.name, "host": host, "metric": metric, "focus": cfg.focus, "cells": cells}


def _train_and_evaluate(stack, task, method: MethodSpec, train_cfg: TrainConfig, cfg: FewshotConfig,
                        pixels: PixelCache) -> dict:
    """One module trained on the few-shot split, evaluated on the whole validation split, then taken off."""
    from prompts import build_module

    tick = time.perf_counter()
    try:
        record = train(stack, build_module(method.method, method.config, task=task.name), task, train_cfg,
                       feature_cache=cfg.feature_cache, feature_cache_mb=cfg.feature_cache_mb, pixels=pixels,
                       progress=False)
        seconds = time.perf_counter() - tick
        metrics = evaluate(stack, task, batch_size=cfg.eval_batch_size, pixels=pixels, progress=False)
    finally:
        stack.clear()
    return {"metrics": metrics, "train_seconds": round(seconds, 2), "lr": train_cfg.lr, "steps": train_cfg.steps,
            "final_loss": record.losses[-1], "losses": [round(loss, 5) for loss in record.losses]}
