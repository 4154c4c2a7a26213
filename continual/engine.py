"""The stream engine (DESIGN section 3): a stream of tasks, one run folder.

For each step: train the task's new module on top of the stack (Avalanche
strategy + stacking plugin, which checks that nothing frozen moved), save it
to the run's module store, evaluate the tasks under the composition policy,
write the matrix row and the run state atomically. ``StreamRun.run`` is that
loop, whole; a step's plan (``StepPlan``) and what it produced
(``StepRecord``) are small dataclasses, and the state file is a list of records.

A study runs several streams (settings) on one host and one set of data. A
step whose whole history matches one already trained in the study (same host,
starting modules, earlier steps and settings) is reused, not retrained: the
paper, too, trained Adapter_COCO once for its three Adapter rows. Likewise an
evaluation already made with the same modules switched on (another setting,
another policy, the zero-shot row) is reused: evaluating one training under
`all`, `own` and `route` costs only the evaluations that differ.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
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

from continual import atomic, distributed
from continual.config import NO_MODULE, DataConfig, RunConfig, StepConfig, TaskConfig, step_train_config, to_yaml
from continual.hosts.base import Host, build_host
from continual.plugins import (CheckpointPlugin, RecordPlugin, ResumeRngPlugin, StackingPlugin, TaskMetric,
                               TrunkCachePlugin)
from continual.strategy import PixelCache, StepPlan, StreamStrategy, build_benchmark
from continual.training import TrainConfig
from evaluation.report import load_runs, run_outputs, study_outputs
from evaluation.summary import derived_metrics
from prompts import METHODS, Stack, build_module, load_module, parameter_counts, save_module
from tasks.errors import DataError
from tasks.task import Task, load_task
from tasks.worlds import WorldSizes

log = logging.getLogger(__name__)

STATE, RESULTS, TIMING, CONFIG, CHECKPOINT = "state.json", "results.json", "timing.json", "config.yaml", "checkpoint.pt"
SUMMARY = "summary.json"  # of a run over seeds


class RunError(RuntimeError):
    """A run folder that cannot be used as asked (another config in it, nothing to resume)."""


def resolve_device(name: str) -> torch.device:
    """The configured device (``auto``: CUDA where there is one); under torchrun, this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {name!r} asked for, but CUDA is not available here")
    return distributed.local_device(torch.device(name))


@dataclass
class Workspace:
    """What the streams of one run share: the config, the host, the tasks, what was trained and evaluated."""

    cfg: RunConfig
    host: Host
    tasks: dict[str, Task]
    device: torch.device
    progress: bool = True
    trained: dict[str, "Done"] = field(default_factory=dict)  # training key -> the step that trained it
    evaluated: dict[str, dict] = field(default_factory=dict)  # evaluation key -> the evaluator's statistics
    # The frozen base every key starts from, hashed once: the host's weights and the starting modules.
    base_identity: dict = field(default_factory=dict)
    pixels: PixelCache | None = None  # the tasks' images as the host's processor sized them (made if not given)

    def __post_init__(self):
        if self.pixels is None:
            self.pixels = PixelCache(self.host.to_pixels)

    @classmethod
    def open(cls, cfg: RunConfig, progress: bool = True) -> "Workspace":
        device = resolve_device(cfg.device)
        host = build_host(cfg.host).to(device)
        trained = {s.task for stream in cfg.streams().values() for s in stream.steps}
        with distributed.main_first():  # rank 0 writes the synthetic worlds' cache, the others read it
            tasks = {name: open_task(name, cfg.tasks[name], cfg.data, host, train_split=name in trained)
                     for name in sorted(trained | set(cfg.held_out))}
        identity = {"host": host.fingerprint(), "start_from": [_module_sha(p) for p in cfg.start_from]}
        return cls(cfg, host, tasks, device, progress, base_identity=identity)

    def evaluation_key(self, task: Task, modules: list[str]) -> str:
        """Identity of evaluating ``task`` with ``modules`` switched on (their digests, in stack order)."""
        payload = {**self.base_identity, "data": asdict(self.cfg.data), "task": asdict(self.cfg.tasks[task.name]),
                   "name": task.name, "modules": modules}
        return _digest(payload)


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def open_task(name: str, spec: TaskConfig, data: DataConfig, host: Host, train_split: bool = True) -> Task:
    """A config's task loaded (synthetic worlds at the config's sizes and seed), what loading left out
    logged, its phrases checked against the host's text encoder now rather than mid-run."""
    sizes = WorldSizes(train=data.train_images, val=data.val_images, image_size=data.image_size)
    task = load_task(spec.data, name=name, phrase_overrides=spec.phrases, seed=data.seed, sizes=sizes,
                     kind=spec.kind, shots=spec.shots, template=spec.template, strict=data.strict,
                     keep_supercategories=data.keep_supercategories, train_split=train_split,
                     val_split=spec.val_split)
    for note in task.data_notes():
        log.warning(note)
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
    """A trained step that another stream of the study may reuse."""

    record: StepRecord
    stream: str
    run_dir: Path


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
    tensorboard: TensorboardLogger | None  # rank 0's alone


class StreamRun:
    """One stream in one run folder."""

    def __init__(self, ws: Workspace, name: str, steps: list[StepConfig], policy: str, run_dir: Path):
        self.ws, self.name, self.steps, self.policy, self.run_dir = ws, name, steps, policy, Path(run_dir)
        self.label = f"settings.{name}" if ws.cfg.is_study else "stream"  # where its steps sit in the config
        self.stream_tasks = [ws.tasks[s.task] for s in steps]
        self.eval_tasks = self.stream_tasks + [ws.tasks[n] for n in ws.cfg.held_out]
        self.train_configs = {i: self.train_config(i, s) for i, s in enumerate(steps) if s.method != NO_MODULE}
        self.zero_shot: dict[str, dict] = {}  # task -> metrics before any training
        self.records: list[StepRecord] = []  # the finished steps, in order

    def train_config(self, index: int, step: StepConfig) -> TrainConfig:
        cfg = step_train_config(self.ws.cfg, step)
        world = distributed.world_size()
        if cfg.batch_size % world:
            raise RunError(f"{self.label}.{index}: train.batch_size {cfg.batch_size} does not split evenly over "
                           f"{world} processes; the global batch is divided between them (use a multiple of {world})")
        cfg.seed += index  # each step its own data order and initialisation
        cfg.lr = cfg.lr or METHODS[step.method].default_lr
        return cfg

    def run_identity(self) -> dict:
        """What every row of the run depends on; none of it may change once a step has finished."""
        return {**self.trained_on(), "policy": self.policy, "evaluate": self.ws.cfg.evaluate}

    def trained_on(self) -> dict:
        """What every step's training depends on besides the steps themselves (not how rows are evaluated)."""
        return {**self.ws.base_identity, "data": asdict(self.ws.cfg.data)}

    def step_identity(self, index: int) -> dict:
        """What step ``index`` trains: its task's data, its method with the method's resolved config, its
        train settings."""
        step = self.steps[index]
        train = self.train_configs.get(index)
        return {"task": step.task, "method": step.method, "config": _method_config(step.method, step.config),
                "train": asdict(train) if train else None, "data": asdict(self.ws.cfg.tasks[step.task])}

    def training_key(self, index: int) -> str:
        """Identity of step ``index``'s training: a mid-step checkpoint belongs to it alone, and a study
        reuses a trained step only when this matches."""
        return _digest([self.trained_on(), [self.step_identity(i) for i in range(index + 1)]])

    # -- the loop -----------------------------------------------------------------
    def run(self) -> dict:
        """Every step not finished yet (all of them unless ``load_finished`` found some); results.json."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        with run_log(self.run_dir) as stream, self._session(stream) as session:
            for folder in self.ws.cfg.start_from:
                session.stack.push(load_module(folder, self.ws.host))
            missing = [j for j, t in enumerate(self.eval_tasks) if t.name not in self.zero_shot]
            if missing:
                self.zero_shot.update(self._zero_shot(session, missing))
                self._save_state()
            for index, step in enumerate(self.steps):
                if index < len(self.records):  # finished before the resume: put its module back
                    self._restore(self.records[index], session)
                    continue
                self.records.append(self._step(index, step, session))
                self._save_state()
            model_seconds = session.record.model_seconds
        results = self.results(self.zero_shot, self.records)
        atomic.write_json(self.run_dir / RESULTS, results)
        self._write_timing(time.time() - started, model_seconds, self.records)
        atomic.write_files(self.run_dir, run_outputs(results))
        if distributed.is_main():  # the modules folder holds every finished module
            (self.run_dir / CHECKPOINT).unlink(missing_ok=True)
        return results

    def _zero_shot(self, session: Session, indices: list[int]) -> dict[str, dict]:
        log.info("[%s] zero-shot row: %s", self.name, ", ".join(self.eval_tasks[j].name for j in indices))
        return self._evaluate(session, indices)

    def _restore(self, record: StepRecord, session: Session) -> None:
        if record.module:
            session.stack.push(load_module(self.run_dir / record.module, self.ws.host))
            self.ws.trained.setdefault(self.training_key(record.index), Done(record, self.name, self.run_dir))

    def _step(self, index: int, step: StepConfig, session: Session) -> StepRecord:
        tick = time.time()
        if index not in self.train_configs:
            record = StepRecord(index, step.task, step.method, dict(step.config))
        elif (done := self.ws.trained.get(self.training_key(index))) is not None:
            record = self._reuse(index, step, done, session)
        else:
            record = StepRecord(index, step.task, step.method, dict(step.config))
            self._train(index, step, record, session)
            self.ws.trained[self.training_key(index)] = Done(record, self.name, self.run_dir)
        if not record.reused_from:
            record.train_seconds = time.time() - tick
        record.metrics = self._evaluate(session, self._evaluated_after(index))
        log.info("[%s] after step %d: %s", self.name, index, ", ".join(
            f"{t} {m[self.ws.tasks[t].metric]:.3f}" for t, m in record.metrics.items()))
        return record

    def _train(self, index: int, step: StepConfig, record: StepRecord, session: Session) -> None:
        plan = StepPlan(index, self.ws.tasks[step.task], step.method, dict(step.config), self.train_configs[index],
                        resume=session.checkpoints.load(index, self.training_key(index)))
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
        record = StepRecord(**{**asdict(done.record), "metrics": {}, "reused_from": done.stream})
        source = done.run_dir / record.module
        _copy_folder(source, self.run_dir / record.module)
        session.stack.push(load_module(source, self.ws.host))  # the copy's bytes; on every rank, not just 0
        return record

    def _evaluated_after(self, index: int) -> list[int]:
        if self.ws.cfg.evaluate == "stream":
            return list(range(len(self.eval_tasks)))
        return [*range(index + 1), *range(len(self.stream_tasks), len(self.eval_tasks))]

    def _evaluate(self, session: Session, indices) -> dict[str, dict]:
        """Every statistic of the tasks at ``indices``, each on the stack as this stream's policy switches it
        for that task; what the run already evaluated with the same modules on is not evaluated again."""
        keys = {}
        for j in indices:
            task = self.eval_tasks[j]
            keys[j] = self.ws.evaluation_key(task, session.stack.digests_in_use(self.policy, task.name, task.phrases))
        todo = [j for j in indices if keys[j] not in self.ws.evaluated]
        if todo:
            session.strategy.eval([session.benchmark.test_stream[j] for j in todo])
            results = session.metric.take_results()
            for j in todo:
                self.ws.evaluated[keys[j]] = results[self.eval_tasks[j].name]
        return {self.eval_tasks[j].name: self.ws.evaluated[keys[j]] for j in indices}

    @contextmanager
    def _session(self, log_stream):
        """Strategy, stack and plugins of this run (metrics logged to ``log_stream`` and TensorBoard); the stack is
        cleared and TensorBoard closed at the end."""
        cfg, host = self.ws.cfg, self.ws.host
        stack = Stack(host, cfg.route_threshold)
        record = RecordPlugin(self.ws.progress)
        metric = TaskMetric()
        stacking = StackingPlugin(stack, self.policy)
        # Avalanche's loggers exist on rank 0 alone (it refuses them elsewhere)
        tensorboard = TensorboardLogger(self.run_dir / "tensorboard") if distributed.is_main() else None
        loggers = [TextLogger(log_stream), tensorboard] if tensorboard else []
        evaluator = EvaluationPlugin(metric, loss_metrics(minibatch=True), loggers=loggers)
        checkpoints = CheckpointPlugin(self.run_dir / CHECKPOINT, cfg.checkpoint_every, stacking, record)
        trunks = TrunkCachePlugin(host, stack, cfg.feature_cache, cfg.feature_cache_mb)
        strategy = StreamStrategy(host=host, train_tasks=self.stream_tasks, eval_tasks=self.eval_tasks,
                                  device=self.ws.device,
                                  plugins=[stacking, ResumeRngPlugin(), trunks, record, checkpoints],
                                  evaluator=evaluator, eval_mb_size=cfg.eval_batch_size)
        benchmark = build_benchmark([t.train for t in self.stream_tasks], [t.val for t in self.eval_tasks],
                                    self.ws.pixels)
        try:
            yield Session(stack, strategy, benchmark, metric, stacking, record, trunks, checkpoints, tensorboard)
        finally:
            stack.clear()
            if tensorboard:
                tensorboard.writer.close()

    # -- results ----------------------------------------------------------------
    def results(self, zero: dict[str, dict], records: list[StepRecord]) -> dict:
        """results.json: deterministic (no timings, no absolute paths), so two runs compare bit for bit."""
        tasks = [t.name for t in self.stream_tasks]
        held_out = [t.name for t in self.eval_tasks[len(tasks):]]
        names = {t.name: t.metric for t in self.eval_tasks}
        rows = [r.metrics for r in records]
        # an entry a row lacks was not evaluated there (evaluate: seen; a task that joined a resumed stream)
        matrix = [[matrix_entry(row, t, names[t]) for t in tasks] for row in rows]
        zero_shot = [zero[t][names[t]] for t in tasks]
        held = {t: {"zero_shot": zero[t][names[t]], "final": matrix_entry(rows[-1], t, names[t]),
                    "after_each": [matrix_entry(row, t, names[t]) for row in rows]} for t in held_out}
        return {
            "name": self.name, "host": self.ws.host.source, "host_fingerprint": self.ws.base_identity["host"],
            "policy": self.policy, "evaluate": self.ws.cfg.evaluate,
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
    def load_finished(self) -> None:
        """The finished part of the run already in this folder, checked against the config.

        Finished steps must be unchanged (RunError naming the step and the key); unfinished and appended
        steps may change. A task evaluated in finished rows whose data changed since, or a task new to the
        run, is not evaluated on those rows (null) and gets its zero-shot entry anew.
        """
        path = self.run_dir / STATE
        if not path.is_file():
            return
        state = json.loads(path.read_text())
        if "identity" not in state:
            raise RunError(f"{path} was written by an older version that did not record what its steps depend "
                           "on; --overwrite starts the run over")
        records = [StepRecord(**r) for r in state["steps"]]
        for index, record in enumerate(records):
            self._check_finished(index, record, state)
        same_run = not _difference(state["identity"], self.run_identity())
        current = {t.name: asdict(self.ws.cfg.tasks[t.name]) for t in self.eval_tasks}
        kept = {t for t, spec in current.items() if same_run and state["tasks"].get(t) == spec}
        for record in records:
            record.metrics = {t: m for t, m in record.metrics.items() if t in kept}
        self.zero_shot = {t: m for t, m in state["zero_shot"].items() if t in kept}
        self.records = records
        if records:
            log.info("[%s] resuming after %d finished step(s); not evaluated on their rows: %s", self.name,
                     len(records), ", ".join(sorted(set(current) - kept)) or "none")

    def _check_finished(self, index: int, record: StepRecord, state: dict) -> None:
        at = f"{self.label}.{index}"
        if index >= len(self.steps):
            raise RunError(f"{self.run_dir}: {at} ({record.task}, {record.method}) has finished, but the config's "
                           f"{self.label} has {len(self.steps)} step(s); a finished step cannot be taken out "
                           "(--overwrite starts over)")
        before = {"run": state["identity"], "step": {"task": record.task, "method": record.method,
                                                     "config": _method_config(record.method, record.config),
                                                     "train": record.train, "data": state["tasks"][record.task]}}
        now = {"run": self.run_identity(), "step": self.step_identity(index)}
        changed = _difference(before, now)
        if changed:
            key, old, new = changed
            where = {"run.host": "host (its weights' fingerprint)",
                     "run.start_from": "start_from (the modules' sha256)"}
            name = where.get(key) or key.replace("run.", "", 1).replace("step.data.", f"tasks.{record.task}.", 1) \
                .replace("step.", f"{at}.", 1)
            raise RunError(f"{self.run_dir}: {at} ({record.task}, {record.method}) has finished, and {name} changed "
                           f"since: {old!r} then, {new!r} now. Finished steps must keep their settings (unfinished "
                           "and appended steps may change); use another run_dir or --overwrite")

    def _save_state(self) -> None:
        tasks = {t.name: asdict(self.ws.cfg.tasks[t.name]) for t in self.eval_tasks}
        atomic.write_json(self.run_dir / STATE, {"identity": self.run_identity(), "tasks": tasks,
                                                 "zero_shot": self.zero_shot, "steps": [asdict(r) for r in self.records]})


def matrix_entry(row: dict[str, dict], task: str, metric: str) -> float | None:
    """A row's primary metric for ``task``; None where the row did not evaluate it."""
    return row[task][metric] if task in row else None


def _method_config(method: str, config: dict) -> dict:
    """A step's method config with the method's defaults filled in (so writing a default out changes nothing)."""
    return dict(config) if method == NO_MODULE else build_module(method, dict(config)).config_dict()


def _difference(before, now, key: str = "") -> tuple[str, object, object] | None:
    """(dotted key, old value, new value) of the first difference between two JSON-like trees; None if equal."""
    if isinstance(before, dict) and isinstance(now, dict):
        for k in [*before, *(k for k in now if k not in before)]:
            found = _difference(before.get(k), now.get(k), f"{key}.{k}" if key else str(k))
            if found:
                return found
        return None
    return None if before == now else (key, before, now)


@contextmanager
def run_log(folder: Path):
    """run.log in ``folder``: the engine's messages (and those who write to the stream it yields).
    Rank 0's alone: the other ranks' stream goes nowhere."""
    if not distributed.is_main():
        with open(os.devnull, "w") as nowhere:
            yield nowhere
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stream = open(folder / "run.log", "a")
    except OSError as err:
        raise atomic.OutputError(f"{folder / 'run.log'}: cannot write ({err.strerror or err})") from err
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("continual")
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        stream.close()


def _copy_folder(source: Path, target: Path) -> None:
    if not distributed.is_main():
        return
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def same_config(config_text: str, other_text: str) -> bool:
    """Whether two configs are the same, whatever their run folders (a run folder may be moved or copied)."""
    def strip(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not line.startswith("run_dir:"))
    return strip(config_text) == strip(other_text)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> str | None:
    """Refuse a folder holding a run unless asked (--resume, --overwrite); empty it for --overwrite.

    Returns the config text of the run to resume, None when there is none (``--resume`` into an empty or
    missing folder starts the run: cluster jobs are requeued with the same command line).
    """
    existing = run_dir / CONFIG
    if existing.is_file() and not (resume or overwrite):
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to "
                       "start it again")
    if overwrite and run_dir.exists() and distributed.is_main():
        shutil.rmtree(run_dir)
    return existing.read_text() if existing.is_file() else None


def record_config(run_dir: Path, config_text: str, previous: str | None) -> None:
    """config.yaml: the config the run goes on with; a different one it replaces is kept as config.previous.yaml."""
    if previous is not None and not same_config(previous, config_text):
        atomic.write_text(run_dir / "config.previous.yaml", previous)
    atomic.write_text(run_dir / CONFIG, config_text)


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
        shared: Workspace | None = None) -> Path:
    """Run every stream of the config (the unfinished steps, with ``resume``); returns the run folder.
    With ``seeds``: once per seed, then the summary over seeds (continual.seeds). ``shared``: the host,
    tasks and evaluations of a run of the same config under another train seed (its seeds' runs)."""
    if cfg.seeds:
        from continual.seeds import run_seeds

        return run_seeds(cfg, resume, overwrite, progress)
    run_dir = Path(cfg.run_dir)
    previous = prepare_run_dir(run_dir, resume, overwrite)
    if shared is None:
        with run_log(run_dir):  # what loading the data skipped goes to run.log too
            ws = Workspace.open(cfg, progress)
    else:
        ws = dataclasses.replace(shared, cfg=cfg)
    streams = [StreamRun(ws, name, steps, policy, run_dir / name if cfg.is_study else run_dir)
               for name, (steps, policy) in cfg.streams().items()]
    if resume:
        for stream in streams:  # every stream checked before anything is written
            stream.load_finished()
    distributed.barrier()  # every rank has read the folder before rank 0 writes to it
    record_config(run_dir, to_yaml(cfg), previous)
    results = {stream.name: stream.run() for stream in streams}
    if cfg.is_study:
        atomic.write_files(run_dir, study_outputs(cfg.name, results))
    return run_dir


def rebuild_reports(run_dir: Path) -> dict[str, dict]:
    """Rewrite report.md and the plots of a run folder (or a study's) from its results.json files."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY).is_file():  # a run over seeds: each seed's folder, then the summary
        from continual.seeds import seed_folder, write_summary

        summary = json.loads((run_dir / SUMMARY).read_text())
        runs = {seed: rebuild_reports(seed_folder(run_dir, seed)) for seed in summary["seeds"]}
        write_summary(run_dir, summary["name"], summary["seeds"], "compat" in summary)
        return runs
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
