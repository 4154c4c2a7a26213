"""The stream loop: every step of one stream, in one run folder, on a workspace its streams share.

For each step of a stream: train the task's new module on top of the stack
(``continual.loop.train``), save it to the run's module store, evaluate the
tasks under the stream's composition policy (``continual.loop.evaluate``),
write the matrix row and the stream's state atomically. ``StreamRun.run`` is
that loop, whole; its parts (``train``, ``reuse``, ``evaluation_keys``,
``evaluate_task``, ``finish``) serve the Ray executor too. What each step
depends on and state.json are in ``continual.run_state``; the folder's files in
``continual.run_folder``.

A study runs several streams (settings) on one host and one set of data. A
step whose whole history matches one already trained in the study (same host,
starting modules, earlier steps and settings) is reused, not retrained: the
paper, too, trained Adapter_COCO once for its three Adapter rows. Likewise an
evaluation already made with the same modules switched on (another setting,
another policy, the zero-shot row, another seed) is reused: evaluating one
training under `all`, `own` and `route` costs only the evaluations that differ.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from continual import atomic, distributed
from continual.config import NO_MODULE, DataConfig, RunConfig, StepConfig, TaskConfig, step_train_config, to_yaml
from continual.errors import NonFiniteError, RunError
from continual.hosts.base import Host, build_host
from continual.loading import PixelCache
from continual.loop import ModelClock, StepCheckpoint, evaluate, train
from continual.run_folder import CHECKPOINT, STATE, TIMING, RunFolder
from continual.run_state import StepRecord, StreamState, digest, method_config
from continual.training import TrainConfig
from evaluation.report import RESULTS, run_outputs, study_outputs
from evaluation.summary import derived_metrics
from prompts import METHODS, Stack, build_module, load_module, parameter_counts, save_module
from tasks.errors import DataError
from tasks.kinds import task_kind
from tasks.task import Task, load_task
from tasks.worlds import WorldSizes

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """The configured device (``auto``: CUDA where there is one); under torchrun, this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {name!r} asked for, but CUDA is not available here")
    return distributed.local_device(torch.device(name))


@dataclass
class Workspace:
    """What the streams of one run share (and its seeds' runs too): the host, the tasks, the images as the
    host sizes them, what was trained and what was evaluated."""

    cfg: RunConfig
    host: Host
    tasks: dict[str, Task]
    progress: bool | None = None  # progress bars (None: on a terminal, not in CI)
    trained: dict[str, "Done"] = field(default_factory=dict)  # training key -> the step that trained it
    evaluated: dict[str, dict] = field(default_factory=dict)  # evaluation key -> the evaluator's statistics
    # The frozen base every key starts from, hashed once: the host's weights and the starting modules.
    base_identity: dict = field(default_factory=dict)
    pixels: PixelCache | None = None  # the tasks' images as the host's processor sized them (made if not given)
    clock: ModelClock = field(default_factory=ModelClock)  # the model's own seconds, all streams together

    def __post_init__(self):
        if self.pixels is None:
            self.pixels = PixelCache(self.host.to_pixels)

    @classmethod
    def open(cls, cfg: RunConfig, progress: bool | None = None) -> "Workspace":
        host = build_host(cfg.host).to(resolve_device(cfg.device))
        trained = {s.task for stream in cfg.streams().values() for s in stream.steps}
        with distributed.main_first():  # rank 0 writes the synthetic worlds' cache, the others read it
            tasks = {name: open_task(name, cfg.tasks[name], cfg.data, host, train_split=name in trained)
                     for name in sorted(trained | set(cfg.held_out))}
        identity = {"host": host.fingerprint(), "start_from": [_module_sha(p) for p in cfg.start_from]}
        return cls(cfg, host, tasks, progress, base_identity=identity)

    def evaluation_key(self, task: Task, modules: list[str]) -> str:
        """Identity of evaluating ``task`` with ``modules`` switched on (their digests, in stack order)."""
        payload = {**self.base_identity, "data": asdict(self.cfg.data), "task": asdict(self.cfg.tasks[task.name]),
                   "name": task.name, "modules": modules}
        return digest(payload)


def open_task(name: str, spec: TaskConfig, data: DataConfig, host: Host | None, train_split: bool = True) -> Task:
    """A config's task loaded (synthetic worlds at the config's sizes and seed), what loading left out
    logged, its phrases checked against the host's text encoder (if given) now rather than mid-run."""
    sizes = WorldSizes(train=data.train_images, val=data.val_images, image_size=data.image_size)
    task = load_task(spec.data, name=name, phrase_overrides=spec.phrases, seed=data.seed, sizes=sizes,
                     kind=spec.kind, shots=spec.shots, template=spec.template, strict=data.strict,
                     keep_supercategories=data.keep_supercategories, train_split=train_split,
                     val_split=spec.val_split)
    for note in task.data_notes():
        log.warning(note)
    try:
        if host is not None:
            host.check_phrases(task.phrases, task.template)
    except DataError as err:
        raise DataError(f"task {name!r} ({spec.data}): {err}") from err
    return task


def _module_sha(folder: str) -> str:
    meta = Path(folder) / "meta.json"
    return json.loads(meta.read_text()).get("sha256", "") if meta.is_file() else str(folder)


@dataclass
class Done:
    """A trained step that another stream of the study may reuse."""

    record: StepRecord
    stream: str
    folder: RunFolder


class StreamRun:
    """One stream in one run folder."""

    def __init__(self, ws: Workspace, name: str, steps: list[StepConfig], policy: str, folder: RunFolder):
        self.ws, self.name, self.steps, self.policy, self.folder = ws, name, steps, policy, folder
        self.label = f"settings.{name}" if ws.cfg.is_study else "stream"  # where its steps sit in the config
        self.stream_tasks = [ws.tasks[s.task] for s in steps]
        self.eval_tasks = self.stream_tasks + [ws.tasks[n] for n in ws.cfg.held_out]
        self.train_configs = {i: self.train_config(i, s) for i, s in enumerate(steps) if s.method != NO_MODULE}
        self.state = StreamState(folder / STATE, self.label)

    def train_config(self, index: int, step: StepConfig) -> TrainConfig:
        cfg = step_train_config(self.ws.cfg, step)
        world = distributed.world_size()
        if cfg.batch_size % world:
            raise RunError(f"{self.label}.{index}: train.batch_size {cfg.batch_size} does not split evenly over "
                           f"{world} processes; the global batch is divided between them (use a multiple of {world})")
        cfg.seed += index  # each step its own data order and initialisation
        cfg.lr = cfg.lr or METHODS[step.method].default_lr
        return cfg

    # -- identities (continual.run_state) -------------------------------------------
    def run_identity(self) -> dict:
        """What every row of the run depends on; none of it may change once a step has finished."""
        return {**self.trained_on(), "policy": self.policy, "evaluate": self.ws.cfg.evaluate}

    def trained_on(self) -> dict:
        """What every step's training depends on besides the steps themselves (not how rows are evaluated)."""
        # precision only where set: the runs written before it existed (all `auto`) keep their identities
        precision = {} if self.ws.cfg.precision == "auto" else {"precision": self.ws.cfg.precision}
        return {**self.ws.base_identity, "data": asdict(self.ws.cfg.data), **precision}

    def step_identity(self, index: int) -> dict:
        """What step ``index`` trains: its task's data, its method with the method's resolved config, its
        train settings."""
        step = self.steps[index]
        train_cfg = self.train_configs.get(index)
        return {"task": step.task, "method": step.method, "config": method_config(step.method, step.config),
                "train": asdict(train_cfg) if train_cfg else None, "data": asdict(self.ws.cfg.tasks[step.task])}

    def training_key(self, index: int) -> str:
        """Identity of step ``index``'s training: a mid-step checkpoint belongs to it alone, and a study
        reuses a trained step only when this matches."""
        return digest([self.trained_on(), [self.step_identity(i) for i in range(index + 1)]])

    def task_configs(self) -> dict[str, dict]:
        return {t.name: asdict(self.ws.cfg.tasks[t.name]) for t in self.eval_tasks}

    def load_finished(self) -> None:
        """The finished part of the run already in this folder, checked against the config (resume)."""
        dropped = self.state.load(self.run_identity(), self.task_configs(),
                                  [self.step_identity(i) for i in range(len(self.steps))])
        if self.state.records:
            log.info("[%s] resuming after %d finished step(s); not evaluated on their rows: %s", self.name,
                     len(self.state.records), ", ".join(dropped) or "none")

    def save_state(self) -> None:
        self.state.save(self.run_identity(), self.task_configs())

    # -- the loop -----------------------------------------------------------------
    def run(self) -> dict:
        """Every step not finished yet (all of them unless ``load_finished`` found some); results.json."""
        started, model_seconds = time.time(), self.ws.clock.seconds
        self.folder.path.mkdir(parents=True, exist_ok=True)
        stack, records = self.new_stack(), self.state.records
        with self.folder.logging(), self.folder.tensorboard() as board:
            try:
                self.push_start(stack)
                missing = self.zero_shot_missing()
                if missing:
                    self.state.zero_shot.update(self.evaluate(stack, missing))
                    self.save_state()
                for index, step in enumerate(self.steps):
                    if index < len(records):  # finished before the resume: put its module back
                        self.restore(records[index], stack)
                        continue
                    records.append(self.step(index, step, stack))
                    self.log_row(board, records[-1])
                    self.save_state()
            finally:
                stack.clear()
        return self.finish(time.time() - started, self.ws.clock.seconds - model_seconds)

    def new_stack(self) -> Stack:
        return Stack(self.ws.host, self.ws.cfg.route_threshold)

    def push_start(self, stack: Stack) -> None:
        """The run's starting modules (``start_from``) onto ``stack``."""
        for module_folder in self.ws.cfg.start_from:
            stack.push(load_module(module_folder, self.ws.host))

    def zero_shot_missing(self) -> list[int]:
        """The evaluated tasks whose zero-shot entry the stream still lacks (logged)."""
        missing = [j for j, t in enumerate(self.eval_tasks) if t.name not in self.state.zero_shot]
        if missing:
            log.info("[%s] zero-shot row: %s", self.name, ", ".join(self.eval_tasks[j].name for j in missing))
        return missing

    def finish(self, seconds: float, model_seconds: float) -> dict:
        """results.json, timing.json and the report of the finished stream; the mid-step checkpoint goes."""
        results = stream_results(self, self.state.zero_shot, self.state.records)
        atomic.write_json(self.folder / RESULTS, results)
        self.write_timing(seconds, model_seconds, self.state.records)
        atomic.write_files(self.folder.path, run_outputs(results))
        if distributed.is_main():  # the modules folder holds every finished module
            (self.folder / CHECKPOINT).unlink(missing_ok=True)
        return results

    def step(self, index: int, step: StepConfig, stack: Stack) -> StepRecord:
        """Train step ``index``'s module (or reuse an identical one), then evaluate its row."""
        tick = time.time()
        record = StepRecord(index, step.task, step.method, dict(step.config))
        with self.at_step(index):
            if index in self.train_configs:
                done = self.ws.trained.get(self.training_key(index))
                if done is not None:
                    record = self.reuse(index, done)
                    stack.push(load_module(self.folder / record.module, self.ws.host))  # the copy's bytes
                else:
                    self.train(index, step, record, stack)
                    self.ws.trained[self.training_key(index)] = Done(record, self.name, self.folder)
            if not record.reused_from:
                record.train_seconds = time.time() - tick
            record.metrics = self.evaluate(stack, self.evaluated_after(index))
        self.log_metrics(record)
        return record

    @contextlib.contextmanager
    def at_step(self, index: int):
        """A divergence inside the block names the step, its task and method, and the run folder."""
        step = self.steps[index]
        try:
            yield
        except NonFiniteError as err:
            raise NonFiniteError(f"{self.label}.{index} ({step.task}, {step.method}) of {self.folder}: {err}") from err

    def log_metrics(self, record: StepRecord) -> None:
        log.info("[%s] after step %d: %s", self.name, record.index, ", ".join(
            f"{t} {m[self.ws.tasks[t].metric]:.3f}" for t, m in record.metrics.items()))

    def train(self, index: int, step: StepConfig, record: StepRecord, stack: Stack) -> None:
        cfg, task = self.train_configs[index], self.ws.tasks[step.task]
        checkpoint = StepCheckpoint(self.folder / CHECKPOINT, index, self.training_key(index),
                                    self.ws.cfg.checkpoint_every)
        resume = checkpoint.load()
        log.info("[%s] step %d: training %s on %s (%d steps, lr %g)%s", self.name, index, step.method, step.task,
                 cfg.steps, cfg.lr, f", resuming at step {resume['step']}" if resume else "")
        module = build_module(step.method, step.config, task=step.task)
        trained = train(stack, module, task, cfg, checkpoint=checkpoint, feature_cache=self.ws.cfg.feature_cache,
                        feature_cache_mb=self.ws.cfg.feature_cache_mb, pixels=self.ws.pixels,
                        progress=self.ws.progress, clock=self.ws.clock, precision=self.ws.cfg.precision,
                        workers=self.ws.cfg.num_workers)
        folder = self.folder.module(index, step.task, step.method)
        save_module(module, self.folder / folder, self.ws.host, stream=self.name, position=index,
                    train=asdict(cfg), final_loss=trained.losses[-1])
        counts = parameter_counts(self.ws.host, module)
        record.train, record.module, record.losses = asdict(cfg), folder, trained.losses
        record.step_seconds, record.trunk_cache = trained.step_seconds, trained.trunk_cache
        record.trainable_params, record.fraction = counts["trainable_params"], counts["fraction"]

    def reuse(self, index: int, done: Done) -> StepRecord:
        """Step ``index``'s record as the identical step ``done`` of another stream trained it, its module
        copied into this stream's folder."""
        step = self.steps[index]
        log.info("[%s] step %d: %s on %s reused from %s", self.name, index, step.method, step.task, done.stream)
        record = StepRecord(**{**asdict(done.record), "metrics": {}, "reused_from": done.stream})
        self.folder.copy_module(done.folder, record.module)
        return record

    def restore(self, record: StepRecord, stack: Stack) -> None:
        """A step finished before a resume: its module back on the stack, there for other streams to reuse."""
        if record.module:
            stack.push(load_module(self.folder / record.module, self.ws.host))
        self.remember(record)

    def remember(self, record: StepRecord) -> None:
        """A finished step's training, for the streams after this one to reuse."""
        if record.module:
            self.ws.trained.setdefault(self.training_key(record.index), Done(record, self.name, self.folder))

    def evaluated_after(self, index: int) -> list[int]:
        if self.ws.cfg.evaluate == "stream":
            return list(range(len(self.eval_tasks)))
        return [*range(index + 1), *range(len(self.stream_tasks), len(self.eval_tasks))]

    def evaluate(self, stack: Stack, indices: list[int]) -> dict[str, dict]:
        """The evaluator's statistics of each task in ``indices`` under the run's policy; an evaluation made
        before with the same modules switched on (another setting, policy or seed) is not made again."""
        found = {}
        for j, key in self.evaluation_keys(stack, indices).items():
            if key not in self.ws.evaluated:
                self.ws.evaluated[key] = self.evaluate_task(stack, j)
            found[self.eval_tasks[j].name] = self.ws.evaluated[key]
        return found

    def evaluation_keys(self, stack: Stack, indices: list[int]) -> dict[int, str]:
        """Each evaluated task's evaluation key: the modules the policy switches on for it, on this stack."""
        return {j: self.ws.evaluation_key(self.eval_tasks[j], stack.digests_in_use(
            self.policy, self.eval_tasks[j].name, self.eval_tasks[j].phrases)) for j in indices}

    def evaluate_task(self, stack: Stack, j: int) -> dict:
        """Evaluate task ``j`` of the stream on ``stack`` under the stream's policy."""
        return evaluate(stack, self.eval_tasks[j], self.policy, batch_size=self.ws.cfg.eval_batch_size,
                        pixels=self.ws.pixels, progress=self.ws.progress, clock=self.ws.clock,
                        precision=self.ws.cfg.precision, workers=self.ws.cfg.num_workers)

    def log_row(self, board, record: StepRecord) -> None:
        """TensorBoard: the step's losses, and its row's logged statistics at the row's index."""
        if board is None:
            return
        first = sum(len(r.losses) for r in self.state.records[:-1])
        for i, loss in enumerate(record.losses):
            board.add_scalar(f"loss/{record.task}", loss, first + i)
        for task, metrics in record.metrics.items():
            kind = task_kind(self.ws.tasks[task].kind)
            for stat in (kind.metric, *kind.logged):
                board.add_scalar(f"{stat}/{task}", metrics[stat], record.index)

    def write_timing(self, seconds: float, model_seconds: float, records: list[StepRecord]) -> None:
        atomic.write_json(self.folder / TIMING, {
            "wall_seconds": seconds, "model_seconds": model_seconds,
            "outside_model_fraction": 1 - model_seconds / seconds if seconds else None,
            "steps": [{"task": r.task, "method": r.method, "train_seconds": r.train_seconds,
                       "step_seconds": r.step_seconds, "trunk_cache": r.trunk_cache} for r in records]})


def stream_results(stream: StreamRun, zero: dict[str, dict], records: list[StepRecord]) -> dict:
    """results.json: deterministic (no timings, no absolute paths), so two runs compare bit for bit."""
    tasks = [t.name for t in stream.stream_tasks]
    held_out = [t.name for t in stream.eval_tasks[len(tasks):]]
    names = {t.name: t.metric for t in stream.eval_tasks}
    rows = [r.metrics for r in records]
    # an entry a row lacks was not evaluated there (evaluate: seen; a task that joined a resumed stream)
    matrix = [[matrix_entry(row, t, names[t]) for t in tasks] for row in rows]
    zero_shot = [zero[t][names[t]] for t in tasks]
    held = {t: {"zero_shot": zero[t][names[t]], "final": matrix_entry(rows[-1], t, names[t]),
                "after_each": [matrix_entry(row, t, names[t]) for row in rows]} for t in held_out}
    return {
        "name": stream.name, "host": stream.ws.host.source, "host_fingerprint": stream.ws.base_identity["host"],
        "policy": stream.policy, "evaluate": stream.ws.cfg.evaluate,
        "tasks": tasks, "methods": [s.method for s in stream.steps], "held_out": held,
        "metric_names": names, "zero_shot": zero_shot, "matrix": matrix,
        "derived": derived_metrics(tasks, matrix, zero_shot, held),
        "modules": [{"task": r.task, "method": r.method, "trainable_params": r.trainable_params,
                     "fraction": r.fraction, "folder": r.module, "train": r.train,
                     "final_loss": r.losses[-1] if r.losses else None, "reused_from": r.reused_from}
                    for r in records if r.method != NO_MODULE],
        "data": {t.name: t.record for t in stream.eval_tasks},
        "metrics": {"zero_shot": zero, "rows": rows},
        "losses": {r.task: r.losses for r in records if r.losses},
    }


def matrix_entry(row: dict[str, dict], task: str, metric: str) -> float | None:
    """A row's primary metric for ``task``; None where the row did not evaluate it."""
    return row[task][metric] if task in row else None


def open_streams(ws: Workspace, resume: bool, previous: str | None) -> list[StreamRun]:
    """The streams of ``ws.cfg`` in its prepared folder (``previous``: the config text it held), their
    finished parts read back with ``resume``; the config recorded."""
    cfg, folder = ws.cfg, RunFolder(ws.cfg.run_dir)
    streams = [StreamRun(ws, name, steps, policy, folder.setting(name) if cfg.is_study else folder)
               for name, (steps, policy) in cfg.streams().items()]
    if resume:
        for stream in streams:  # every stream checked before anything is written
            stream.load_finished()
    distributed.barrier()  # every rank has read the folder before rank 0 writes to it
    folder.record_config(to_yaml(cfg), previous)
    return streams


def finish_run(cfg: RunConfig, results: dict[str, dict]) -> None:
    """A study's compat.json and report over its finished streams' results ({stream: results.json})."""
    if cfg.is_study:
        atomic.write_files(RunFolder(cfg.run_dir).path, study_outputs(cfg.name, results))
