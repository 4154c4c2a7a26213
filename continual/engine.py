"""The stream engine (DESIGN section 3): a stream of tasks, one run folder.

For each step: train the task's new module on top of the stack (Avalanche
strategy + stacking plugin, which checks that nothing frozen moved), save it
to the run's module store, evaluate the tasks under the composition policy,
write the matrix row and the run state atomically. ``StreamRun.run`` is that
loop, whole; a step's plan (``StepPlan``) and what it produced
(``StepRecord``) are small dataclasses, and the state file is a list of records.

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
from typing import Any

import torch
from avalanche.evaluation.metrics import loss_metrics
from avalanche.logging import TensorboardLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin
from omegaconf import OmegaConf

from continual import atomic
from continual.config import NO_MODULE, DataConfig, RunConfig, StepConfig, TaskConfig, step_train_config, to_yaml
from continual.hosts.base import Host, build_host
from continual.plugins import CheckpointPlugin, RecordPlugin, StackingPlugin, TaskMetric, TrunkCachePlugin
from continual.strategy import StepPlan, StreamStrategy, build_benchmark
from continual.training import TrainConfig
from evaluation.report import load_runs, run_outputs, study_outputs
from evaluation.summary import derived_metrics
from prompts import METHODS, Stack, load_module, parameter_counts, save_module
from tasks.errors import DataError
from tasks.task import Task, load_task
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
    host: Host
    tasks: dict[str, Task]
    device: torch.device
    progress: bool = True
    memo: dict[str, "Done"] = field(default_factory=dict)
    # The frozen base every key starts from, hashed once: the host's weights and the starting modules.
    base_identity: dict = field(default_factory=dict)

    @classmethod
    def open(cls, cfg: RunConfig, progress: bool = True) -> "Workspace":
        device = resolve_device(cfg.device)
        host = build_host(cfg.host).to(device)
        used = {s.task for steps in cfg.streams().values() for s in steps} | set(cfg.held_out)
        tasks = {name: open_task(name, cfg.tasks[name], cfg.data, host) for name in sorted(used)}
        identity = {"host": host.fingerprint(), "start_from": [_module_sha(p) for p in cfg.start_from]}
        return cls(cfg, host, tasks, device, progress, base_identity=identity)

    def key(self, *parts) -> str:
        """Identity of a computation: the host, the starting modules, the evaluation settings and ``parts``."""
        cfg = self.cfg
        payload = {**self.base_identity, "policy": cfg.policy, "evaluate": cfg.evaluate, "held_out": cfg.held_out,
                   "data": asdict(cfg.data), "tasks": {n: asdict(cfg.tasks[n]) for n in sorted(self.tasks)},
                   "parts": parts}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def open_task(name: str, spec: TaskConfig, data: DataConfig, host: Host) -> Task:
    """A config's task loaded (synthetic worlds at the config's sizes and seed), its phrases checked
    against the host's text encoder now rather than mid-run."""
    sizes = WorldSizes(train=data.train_images, val=data.val_images, image_size=data.image_size)
    task = load_task(spec.data, name=name, phrase_overrides=spec.phrases, seed=data.seed, sizes=sizes,
                     kind=spec.kind, shots=spec.shots, template=spec.template)
    try:
        host.check_phrases(task.phrases, task.template)
    except DataError as err:
        raise DataError(f"task {name!r} ({spec.data}): {err}") from err
    return task


def _module_sha(folder: str) -> str:
    meta = Path(folder) / "meta.json"
    return json.loads(meta.read_text()).get("sha256", "") if meta.is_file() else str(folder)


@dataclass
class StepRecord:
    """What one stream step produced; state.json holds one per finished step."""

    index: int
    task: str
    method: str
    config: dict
    train: dict | None = None  # the TrainConfig it trained with (None: a `none` step)
    module: str | None = None  # its folder under the run folder
    trainable_params: int = 0
    fraction: float = 0.0
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    trunk_cache: dict = field(default_factory=dict)
    train_seconds: float | None = None
    metrics: dict[str, dict] = field(default_factory=dict)  # task -> every statistic of its evaluator
    reused_from: str | None = None  # the study setting whose identical step this copies


@dataclass
class Done:
    """A finished step (or zero-shot row) that another stream of the study may reuse."""

    record: StepRecord | None
    stream: str
    run_dir: Path
    metrics: dict[str, dict] = field(default_factory=dict)


@dataclass
class Session:
    """The objects one stream run trains and evaluates with (built once per run)."""

    stack: Stack
    strategy: StreamStrategy
    benchmark: Any
    metric: TaskMetric
    stacking: StackingPlugin
    record: RecordPlugin
    trunks: TrunkCachePlugin
    checkpoints: CheckpointPlugin
    tensorboard: TensorboardLogger


class StreamRun:
    """One stream in one run folder."""

    def __init__(self, ws: Workspace, name: str, steps: list[StepConfig], run_dir: Path):
        self.ws, self.name, self.steps, self.run_dir = ws, name, steps, Path(run_dir)
        self.stream_tasks = [ws.tasks[s.task] for s in steps]
        self.eval_tasks = self.stream_tasks + [ws.tasks[n] for n in ws.cfg.held_out]
        self.train_configs = {i: self.train_config(i, s) for i, s in enumerate(steps) if s.method != NO_MODULE}

    def train_config(self, index: int, step: StepConfig) -> TrainConfig:
        cfg = step_train_config(self.ws.cfg, step)
        cfg.seed += index  # each step its own data order and initialisation
        cfg.lr = cfg.lr or METHODS[step.method].default_lr
        return cfg

    def step_key(self, index: int) -> str:
        history = [{"task": s.task, "method": s.method, "config": dict(s.config),
                    "train": asdict(self.train_configs[i]) if i in self.train_configs else None}
                   for i, s in enumerate(self.steps[:index + 1])]
        return self.ws.key("step", history)

    # -- the loop -----------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        zero_shot, records = self._load_state() if resume else (None, [])
        started = time.time()
        with self._logging() as text_log, self._session(text_log) as session:
            for folder in self.ws.cfg.start_from:
                session.stack.push(load_module(folder, self.ws.host))
            if zero_shot is None:
                zero_shot = self._zero_shot(session)
                self._save_state(zero_shot, records)
            else:
                self.ws.memo.setdefault(self._zero_shot_key(), Done(None, self.name, self.run_dir, zero_shot))
            for index, step in enumerate(self.steps):
                if index < len(records):  # finished before the resume: put its module back
                    self._restore(records[index], session)
                    continue
                records.append(self._step(index, step, session))
                self._save_state(zero_shot, records)
            model_seconds = session.record.model_seconds
        results = self.results(zero_shot, records)
        atomic.write_json(self.run_dir / RESULTS, results)
        self._write_timing(time.time() - started, model_seconds, records)
        atomic.write_files(self.run_dir, run_outputs(results))
        (self.run_dir / CHECKPOINT).unlink(missing_ok=True)  # the modules folder holds every finished module
        return results

    def _zero_shot_key(self) -> str:
        return self.ws.key("zero-shot", [t.name for t in self.eval_tasks])

    def _zero_shot(self, session: Session) -> dict[str, dict]:
        key = self._zero_shot_key()
        if key not in self.ws.memo:
            log.info("[%s] zero-shot row", self.name)
            metrics = self._evaluate(session, range(len(self.eval_tasks)))
            self.ws.memo[key] = Done(None, self.name, self.run_dir, metrics)
        return self.ws.memo[key].metrics

    def _restore(self, record: StepRecord, session: Session) -> None:
        if record.module:
            session.stack.push(load_module(self.run_dir / record.module, self.ws.host))
        self.ws.memo.setdefault(self.step_key(record.index), Done(record, self.name, self.run_dir))

    def _step(self, index: int, step: StepConfig, session: Session) -> StepRecord:
        key = self.step_key(index)
        if key in self.ws.memo:
            return self._reuse(index, step, self.ws.memo[key], session)
        record = StepRecord(index, step.task, step.method, dict(step.config))
        tick = time.time()
        if index in self.train_configs:
            self._train(index, step, record, session)
        record.train_seconds = time.time() - tick
        record.metrics = self._evaluate(session, self._evaluated_after(index))
        log.info("[%s] after step %d: %s", self.name, index, ", ".join(
            f"{t} {m[self.ws.tasks[t].metric]:.3f}" for t, m in record.metrics.items()))
        self.ws.memo[key] = Done(record, self.name, self.run_dir)
        return record

    def _train(self, index: int, step: StepConfig, record: StepRecord, session: Session) -> None:
        plan = StepPlan(index, self.ws.tasks[step.task], step.method, dict(step.config), self.train_configs[index],
                        resume=session.checkpoints.load(index))
        log.info("[%s] step %d: training %s on %s (%d steps, lr %g)%s", self.name, index, plan.method, step.task,
                 plan.train.steps, plan.train.lr, f", resuming at step {plan.resume['step']}" if plan.resume else "")
        session.strategy.train_step(plan, session.benchmark.train_stream[index])
        module, losses = session.stacking.module, session.record.losses
        folder = Path("modules") / f"{index:02d}-{step.task}-{step.method}"
        save_module(module, self.run_dir / folder, self.ws.host, stream=self.name, position=index,
                    train=asdict(plan.train), final_loss=losses[-1])
        counts = parameter_counts(self.ws.host, module)
        record.train, record.module, record.losses = asdict(plan.train), str(folder), losses
        record.step_seconds, record.trunk_cache = session.record.step_seconds, session.trunks.stats
        record.trainable_params, record.fraction = counts["trainable_params"], counts["fraction"]

    def _reuse(self, index: int, step: StepConfig, done: Done, session: Session) -> StepRecord:
        log.info("[%s] step %d: %s on %s reused from %s", self.name, index, step.method, step.task, done.stream)
        record = StepRecord(**{**asdict(done.record), "reused_from": done.stream})
        if record.module:
            target = self.run_dir / record.module
            _copy_folder(done.run_dir / record.module, target)
            session.stack.push(load_module(target, self.ws.host))
        return record

    def _evaluated_after(self, index: int) -> list[int]:
        if self.ws.cfg.evaluate == "stream":
            return list(range(len(self.eval_tasks)))
        return [*range(index + 1), *range(len(self.stream_tasks), len(self.eval_tasks))]

    def _evaluate(self, session: Session, indices) -> dict[str, dict]:
        session.strategy.eval([session.benchmark.test_stream[j] for j in indices])
        return session.metric.take_results()

    @contextmanager
    def _session(self, text_log):
        """Strategy, stack and plugins of this run; the stack is cleared and TensorBoard closed at the end."""
        cfg, host = self.ws.cfg, self.ws.host
        stack = Stack(host)
        record = RecordPlugin(self.ws.progress)
        metric = TaskMetric()
        stacking = StackingPlugin(stack, cfg.policy)
        tensorboard = TensorboardLogger(self.run_dir / "tensorboard")
        evaluator = EvaluationPlugin(metric, loss_metrics(minibatch=True), loggers=[tensorboard, text_log])
        checkpoints = CheckpointPlugin(self.run_dir / CHECKPOINT, cfg.checkpoint_every, stacking, record)
        trunks = TrunkCachePlugin(host, stack, cfg.feature_cache, cfg.feature_cache_mb)
        strategy = StreamStrategy(host=host, train_tasks=self.stream_tasks, eval_tasks=self.eval_tasks,
                                  device=self.ws.device, plugins=[stacking, trunks, record, checkpoints],
                                  evaluator=evaluator, eval_mb_size=cfg.eval_batch_size)
        benchmark = build_benchmark([t.train for t in self.stream_tasks], [t.val for t in self.eval_tasks],
                                    host.to_pixels)
        try:
            yield Session(stack, strategy, benchmark, metric, stacking, record, trunks, checkpoints, tensorboard)
        finally:
            stack.clear()
            tensorboard.writer.close()

    # -- results ----------------------------------------------------------------
    def results(self, zero: dict[str, dict], records: list[StepRecord]) -> dict:
        """results.json: deterministic (no timings, no absolute paths), so two runs compare bit for bit."""
        tasks = [t.name for t in self.stream_tasks]
        held_out = [t.name for t in self.eval_tasks[len(tasks):]]
        names = {t.name: t.metric for t in self.eval_tasks}
        rows = [r.metrics for r in records]
        matrix = [[row[t][names[t]] if t in row else None for t in tasks] for row in rows]
        zero_shot = [zero[t][names[t]] for t in tasks]
        held = {t: {"zero_shot": zero[t][names[t]], "final": rows[-1][t][names[t]],
                    "after_each": [row[t][names[t]] for row in rows]} for t in held_out}
        return {
            "name": self.name, "host": self.ws.host.source, "host_fingerprint": self.ws.base_identity["host"],
            "policy": self.ws.cfg.policy, "evaluate": self.ws.cfg.evaluate,
            "tasks": tasks, "methods": [s.method for s in self.steps], "held_out": held,
            "metric_names": names, "zero_shot": zero_shot, "matrix": matrix,
            "derived": derived_metrics(tasks, matrix, zero_shot, held),
            "modules": [{"task": r.task, "method": r.method, "trainable_params": r.trainable_params,
                         "fraction": r.fraction, "folder": r.module, "train": r.train,
                         "final_loss": r.losses[-1] if r.losses else None, "reused_from": r.reused_from}
                        for r in records if r.method != NO_MODULE],
            "data": {t.name: t.record for t in self.eval_tasks},
            "metrics": {"zero_shot": zero, "rows": rows},
            "losses": {r.task: r.losses for r in records if r.losses},
        }

    def _write_timing(self, seconds: float, model_seconds: float, records: list[StepRecord]) -> None:
        atomic.write_json(self.run_dir / TIMING, {
            "wall_seconds": seconds, "model_seconds": model_seconds,
            "outside_model_fraction": 1 - model_seconds / seconds if seconds else None,
            "steps": [{"task": r.task, "method": r.method, "train_seconds": r.train_seconds,
                       "step_seconds": r.step_seconds, "trunk_cache": r.trunk_cache} for r in records]})

    # -- state ------------------------------------------------------------------
    def _load_state(self) -> tuple[dict | None, list[StepRecord]]:
        path = self.run_dir / STATE
        if not path.is_file():
            return None, []
        state = json.loads(path.read_text())
        return state["zero_shot"], [StepRecord(**s) for s in state["steps"]]

    def _save_state(self, zero_shot: dict, records: list[StepRecord]) -> None:
        atomic.write_json(self.run_dir / STATE, {"zero_shot": zero_shot, "steps": [asdict(r) for r in records]})

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


def prepare_run_dir(config_text: str, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding another run unless asked; record the resolved config (YAML text)."""
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
    prepare_run_dir(to_yaml(cfg), run_dir, resume, overwrite)
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
