"""The stream engine (DESIGN section 3): a stream of tasks, one run folder.

For each step: train the task's new module on top of the stack (Avalanche
strategy + stacking plugin, which checks that nothing frozen moved), save it
to the run's module store, evaluate the tasks under the composition policy,
write the matrix row and the run state atomically.

A study runs several streams (settings) on one host and one set of data. A
step whose whole history matches one already run in the study (same host,
starting modules, earlier steps and settings) is reused, not retrained: the
paper, too, trained Adapter_COCO once for its three Adapter rows.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from avalanche.evaluation.metrics import loss_metrics
from avalanche.logging import TensorboardLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin
from omegaconf import OmegaConf

from continual import atomic
from continual.config import NO_MODULE, RunConfig, StepConfig, step_train_config, to_yaml
from continual.hosts.grounding_dino import GroundingDinoHost
from continual.plugins import (CheckpointPlugin, CocoMetric, RecordPlugin, StackingPlugin, TrainingPlan,
                               TrunkCachePlugin)
from continual.strategy import HostDetector, StreamStrategy, build_benchmark
from continual.training import TrainConfig
from evaluation.report import load_runs, run_outputs, study_outputs
from evaluation.summary import derived_metrics
from prompts import METHODS, Stack, load_module, parameter_counts, save_module
from tasks.errors import DataError
from tasks.task import DetectionTask, load_task
from tasks.worlds import WorldSizes

log = logging.getLogger(__name__)

STATE, RESULTS, TIMING, CONFIG, CHECKPOINT = "state.json", "results.json", "timing.json", "config.yaml", "checkpoint.pt"


class RunError(RuntimeError):
    """A run folder that cannot be used as asked (another config in it, nothing to resume)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {name!r} asked for, but CUDA is not available here")
    return torch.device(name)


@dataclass
class Workspace:
    """What the streams of one run share: the config, the host, the tasks, the reuse memo."""

    cfg: RunConfig
    host: GroundingDinoHost
    tasks: dict[str, DetectionTask]
    device: torch.device
    progress: bool = True
    memo: dict[str, dict] = field(default_factory=dict)
    # The frozen base every key starts from, hashed once: the host's weights and the starting modules.
    base_identity: dict = field(default_factory=dict)

    @classmethod
    def open(cls, cfg: RunConfig, progress: bool = True) -> "Workspace":
        device = resolve_device(cfg.device)
        host = GroundingDinoHost.from_pretrained(cfg.host).to(device)
        sizes = WorldSizes(train=cfg.data.train_images, val=cfg.data.val_images, image_size=cfg.data.image_size)
        used = {s.task for steps in cfg.streams().values() for s in steps} | set(cfg.held_out)
        tasks = {name: load_task(cfg.tasks[name].data, name=name, phrase_overrides=cfg.tasks[name].phrases,
                                 seed=cfg.data.seed, sizes=sizes) for name in sorted(used)}
        for name, task in tasks.items():  # phrases the text encoder cannot take fail now, not mid-stream
            try:
                host.prompts(task.phrases)
            except DataError as err:
                raise DataError(f"task {name!r} ({cfg.tasks[name].data}): {err}") from err
        identity = {"host": host.fingerprint(), "start_from": [_module_sha(p) for p in cfg.start_from]}
        return cls(cfg, host, tasks, device, progress, base_identity=identity)

    def key(self, *parts) -> str:
        """Identity of a computation: the host, the starting modules, the evaluation settings and ``parts``."""
        cfg = self.cfg
        payload = {**self.base_identity, "policy": cfg.policy, "evaluate": cfg.evaluate, "held_out": cfg.held_out,
                   "data": asdict(cfg.data), "tasks": {n: asdict(cfg.tasks[n]) for n in sorted(self.tasks)},
                   "parts": parts}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _module_sha(folder: str) -> str:
    meta = Path(folder) / "meta.json"
    return json.loads(meta.read_text()).get("sha256", "") if meta.is_file() else str(folder)


class StreamRun:
    """One stream in one run folder."""

    def __init__(self, ws: Workspace, name: str, steps: list[StepConfig], run_dir: Path):
        self.ws, self.name, self.steps, self.run_dir = ws, name, steps, Path(run_dir)
        self.stream_tasks = [ws.tasks[s.task] for s in steps]
        self.eval_tasks = self.stream_tasks + [ws.tasks[n] for n in ws.cfg.held_out]
        self.plans = {i: TrainingPlan(ws.tasks[s.task], s.method, dict(s.config), self.train_config(i, s))
                      for i, s in enumerate(steps) if s.method != NO_MODULE}

    def train_config(self, index: int, step: StepConfig) -> TrainConfig:
        cfg = step_train_config(self.ws.cfg, step)
        cfg.seed += index  # each step its own data order and initialisation
        cfg.lr = cfg.lr or METHODS[step.method].default_lr
        return cfg

    def step_key(self, index: int) -> str:
        history = [{"task": s.task, "method": s.method, "config": dict(s.config),
                    "train": asdict(self.plans[i].train) if i in self.plans else None}
                   for i, s in enumerate(self.steps[:index + 1])]
        return self.ws.key("step", history)

    # -- running ----------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_state() if resume else {"zero_shot": None, "steps": []}
        started, host = time.time(), self.ws.host
        stack = Stack(host)
        with self._logging() as text_log:
            record = RecordPlugin(self.ws.progress)
            metric = CocoMetric(self.eval_tasks)
            stacking = StackingPlugin(stack, self.plans, self.eval_tasks, self.ws.cfg.policy)
            tensorboard = TensorboardLogger(self.run_dir / "tensorboard")
            evaluator = EvaluationPlugin(metric, loss_metrics(minibatch=True), loggers=[tensorboard, text_log])
            self.checkpoints = CheckpointPlugin(self.run_dir / CHECKPOINT, self.ws.cfg.checkpoint_every, stacking,
                                                record)
            trunks = TrunkCachePlugin(host, stack, self.ws.cfg.feature_cache, self.ws.cfg.feature_cache_mb)
            strategy = StreamStrategy(model=HostDetector(host), device=self.ws.device,
                                      plugins=[stacking, trunks, record, self.checkpoints],
                                      evaluator=evaluator, eval_mb_size=self.ws.cfg.eval_batch_size)
            benchmark = build_benchmark([t.train for t in self.stream_tasks], [t.val for t in self.eval_tasks],
                                        host.to_pixels)
            try:
                for folder in self.ws.cfg.start_from:
                    stack.push(load_module(folder, host))
                key = self.ws.key("zero-shot", [t.name for t in self.eval_tasks])
                if state["zero_shot"] is not None:
                    self.ws.memo.setdefault(key, {"metrics": state["zero_shot"]})
                else:
                    if key not in self.ws.memo:
                        log.info("[%s] zero-shot row", self.name)
                        self.ws.memo[key] = {"metrics": self._evaluate(strategy, benchmark, metric,
                                                                       range(len(self.eval_tasks)))}
                    state["zero_shot"] = self.ws.memo[key]["metrics"]
                    self._save_state(state)
                for index, step in enumerate(self.steps):
                    if index < len(state["steps"]):  # finished before the resume
                        done = state["steps"][index]
                        if done["module"]:
                            stack.push(load_module(self.run_dir / done["module"], host))
                        self.ws.memo.setdefault(self.step_key(index),
                                                done | {"stream": self.name, "run_dir": str(self.run_dir)})
                        continue
                    state["steps"].append(self._step(index, step, stack, strategy, benchmark, metric, stacking,
                                                     record, trunks))
                    self._save_state(state)
            finally:
                stack.clear()
                tensorboard.writer.close()
        results = self.results(state)
        atomic.write_json(self.run_dir / RESULTS, results)
        seconds = time.time() - started
        atomic.write_json(self.run_dir / TIMING, {
            "wall_seconds": seconds, "model_seconds": record.model_seconds,
            "outside_model_fraction": 1 - record.model_seconds / seconds if seconds else None,
            "steps": [{"task": s["task"], "method": s["method"], "train_seconds": s.get("train_seconds"),
                       "step_seconds": s.get("step_seconds", []), "trunk_cache": s.get("trunk_cache", {})}
                      for s in state["steps"]]})
        atomic.write_files(self.run_dir, run_outputs(results))
        (self.run_dir / CHECKPOINT).unlink(missing_ok=True)  # the modules folder holds every finished module
        return results

    def _step(self, index, step, stack, strategy, benchmark, metric, stacking, record, trunks) -> dict:
        key = self.step_key(index)
        if key in self.ws.memo:
            done = self.ws.memo[key]
            log.info("[%s] step %d: %s on %s reused from %s", self.name, index, step.method, step.task, done["stream"])
            if done["module"]:
                target = self.run_dir / done["module"]
                _copy_folder(Path(done["run_dir"]) / done["module"], target)
                stack.push(load_module(target, self.ws.host))
            return {k: v for k, v in done.items() if k not in ("run_dir",)} | {"reused_from": done["stream"]}
        entry = {"index": index, "task": step.task, "method": step.method, "config": dict(step.config),
                 "train": None, "module": None, "trainable_params": 0, "fraction": 0.0, "losses": []}
        tick = time.time()
        if index in self.plans:
            plan = self.plans[index]
            log.info("[%s] step %d: training %s on %s (%d steps, lr %g)", self.name, index, plan.method,
                     plan.task.name, plan.train.steps, plan.train.lr)
            strategy.train_config, strategy.start_step = plan.train, 0
            resumed = self.checkpoints.load(index)
            if resumed is not None:
                log.info("[%s] step %d: resuming at training step %d", self.name, index, resumed["step"])
                stacking.resume_state, record.resume_losses = resumed, resumed["losses"]
                strategy.start_step = resumed["step"]
            strategy.train(benchmark.train_stream[index], eval_streams=[])
            module = stacking.module
            folder = Path("modules") / f"{index:02d}-{step.task}-{step.method}"
            save_module(module, self.run_dir / folder, self.ws.host, stream=self.name, position=index,
                        train=asdict(plan.train), final_loss=record.losses[-1])
            entry.update(train=asdict(plan.train), module=str(folder), losses=record.losses,
                         step_seconds=record.step_seconds, trunk_cache=trunks.stats,
                         **{k: parameter_counts(self.ws.host, module)[k] for k in ("trainable_params", "fraction")})
        entry["train_seconds"] = time.time() - tick
        evaluated = range(len(self.eval_tasks)) if self.ws.cfg.evaluate == "stream" else \
            [*range(index + 1), *range(len(self.stream_tasks), len(self.eval_tasks))]
        entry["metrics"] = self._evaluate(strategy, benchmark, metric, evaluated)
        log.info("[%s] after step %d: %s", self.name, index,
                 ", ".join(f"{t} {m['mAP']:.3f}" for t, m in entry["metrics"].items()))
        self.ws.memo[key] = entry | {"stream": self.name, "run_dir": str(self.run_dir)}
        return entry

    def _evaluate(self, strategy, benchmark, metric, indices) -> dict[str, dict]:
        metric.results.clear()
        strategy.eval([benchmark.test_stream[j] for j in indices])
        return {self.eval_tasks[j].name: metric.results[self.eval_tasks[j].name] for j in indices}

    # -- results ----------------------------------------------------------------
    def results(self, state: dict) -> dict:
        """results.json: deterministic (no timings, no absolute paths), so two runs compare bit for bit."""
        tasks = [t.name for t in self.stream_tasks]
        held_out = [t.name for t in self.eval_tasks[len(tasks):]]
        rows = [s["metrics"] for s in state["steps"]]
        zero = state["zero_shot"]
        matrix = [[row[t]["mAP"] if t in row else None for t in tasks] for row in rows]
        zero_shot = [zero[t]["mAP"] for t in tasks]
        held = {t: {"zero_shot": zero[t]["mAP"], "final": rows[-1][t]["mAP"],
                    "after_each": [row[t]["mAP"] for row in rows]} for t in held_out}
        return {
            "name": self.name, "host": self.ws.host.source, "host_fingerprint": self.ws.base_identity["host"],
            "policy": self.ws.cfg.policy, "evaluate": self.ws.cfg.evaluate,
            "tasks": tasks, "methods": [s.method for s in self.steps], "held_out": held,
            "zero_shot": zero_shot, "matrix": matrix,
            "derived": derived_metrics(tasks, matrix, zero_shot, held),
            "modules": [{"task": s["task"], "method": s["method"], "trainable_params": s["trainable_params"],
                         "fraction": s["fraction"], "folder": s["module"], "train": s["train"],
                         "final_loss": s["losses"][-1] if s["losses"] else None, "reused_from": s.get("reused_from")}
                        for s in state["steps"] if s["method"] != NO_MODULE],
            "coco": {"zero_shot": zero, "rows": rows},
            "losses": {s["task"]: s["losses"] for s in state["steps"] if s["losses"]},
        }

    # -- state ------------------------------------------------------------------
    def _load_state(self) -> dict:
        path = self.run_dir / STATE
        if not path.is_file():
            return {"zero_shot": None, "steps": []}
        return json.loads(path.read_text())

    def _save_state(self, state: dict) -> None:
        atomic.write_json(self.run_dir / STATE, state)

    @contextmanager
    def _logging(self):
        """run.log: the engine's own messages and Avalanche's TextLogger."""
        stream = open(self.run_dir / "run.log", "a")
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger("continual")
        root.addHandler(handler)
        try:
            yield TextLogger(stream)
        finally:
            root.removeHandler(handler)
            stream.close()


def _copy_folder(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def _without_run_dir(config_text: str) -> str:
    """A config's identity for --resume: a run folder may have been moved or copied."""
    return "\n".join(line for line in config_text.splitlines() if not line.startswith("run_dir:"))


def prepare_run_dir(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding another run unless asked; record the resolved config."""
    config_text = to_yaml(cfg)
    existing = run_dir / CONFIG
    if existing.is_file() and not overwrite:
        if not resume:
            raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to "
                           "start it again")
        if _without_run_dir(existing.read_text()) != _without_run_dir(config_text):
            raise RunError(f"{run_dir} holds a run of another config ({existing}); --resume needs the same config, "
                           "--overwrite starts over")
    elif resume and not existing.is_file():
        raise RunError(f"{run_dir}: nothing to resume (no {CONFIG}); run without --resume to start")
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    atomic.write_text(run_dir / CONFIG, config_text)


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Run every stream of the config; returns the run folder."""
    run_dir = Path(cfg.run_dir)
    prepare_run_dir(cfg, run_dir, resume, overwrite)
    ws = Workspace.open(cfg, progress)
    results = {}
    for name, steps in cfg.streams().items():
        folder = run_dir / name if cfg.is_study else run_dir
        results[name] = StreamRun(ws, name, steps, folder).run(resume)
    if cfg.is_study:
        atomic.write_files(run_dir, study_outputs(cfg.name, results))
    return run_dir


def rebuild_reports(run_dir: Path) -> dict[str, dict]:
    """Rewrite report.md and the plots of a run folder (or a study's) from its results.json files."""
    run_dir = Path(run_dir)
    runs = load_runs(run_dir)
    if (run_dir / RESULTS).is_file():
        atomic.write_files(run_dir, run_outputs(next(iter(runs.values()))))
        return runs
    for setting, results in runs.items():
        atomic.write_files(run_dir / setting, run_outputs(results))
    atomic.write_files(run_dir, study_outputs(study_name(run_dir), runs))
    return runs


def study_name(run_dir: Path) -> str:
    """The name in the study's recorded config (the folder's name if it has none)."""
    config = Path(run_dir) / CONFIG
    return str(OmegaConf.load(config).get("name", run_dir.name)) if config.is_file() else Path(run_dir).name
