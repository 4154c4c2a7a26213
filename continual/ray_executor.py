"""``executor: ray``: every step and evaluation of a run's streams (all settings, seeds and lr multiples) as
Ray tasks, to the results the local executor writes.

The graph. One training task per distinct training (``StreamRun.training_key``): a step that several
settings share is trained once, in the folder of the first stream that has it, and each step above it takes
its result as an input, so Ray starts that step when it is done. One evaluation task per distinct
evaluation key (the modules a policy switches on), submitted as soon as the modules of its row are trained,
and memoised as the local executor memoises evaluations. A task runs the engine's own code
(``StreamRun.train``, ``StreamRun.evaluate_task``) on a workspace (host, tasks, pixel cache) that its worker
process loads once.

The results do not depend on where or in which order a task runs: a step's random numbers come from its own
seed, an evaluation draws none, and every worker computes with the driver's torch thread count (Ray would
give a 1-CPU task one thread, and CPU float sums round differently with another count).

Files. Workers write module folders, mid-step checkpoints and their messages to run.log into the run folder
(on a cluster: a file system that every node mounts at the same path, as the data and the host's folder);
the driver alone writes state.json (each row once its evaluations are in, rows in order), results.json,
reports and summaries. A worker killed mid-step: Ray runs its task again, and the step goes on from its
checkpoint. The driver killed: ``--resume`` reads state.json and submits only what is missing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from continual import distributed
from continual.config import NO_MODULE, Resources, RunConfig, import_modules, warn_once
from continual.errors import ContinualError, RunError
from continual.loop import default_progress
from continual.run_folder import RunFolder
from continual.run_state import StepRecord, digest
from continual.streams import Done, StreamRun, Workspace, finish_run, resolve_device
from prompts import Stack, load_module

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # runs of a task whose worker died (a killed process, a lost node) before the run stops


def run_on_ray(ws: Workspace, runs: list[list[StreamRun]]) -> None:
    """Every stream of ``runs`` (each seed's run: its opened streams) to its results, then each study's
    outputs. Ray is the one started for the run, the one this process already joined, or the cluster at
    ``ray_address`` (else RAY_ADDRESS)."""
    if distributed.world_size() > 1:
        raise RunError("executor ray starts its own workers: run it as one process, not under torchrun")
    with connected(ws.cfg.ray_address) as ray:
        results = Grid(ray, [s for streams in runs for s in streams], ws.progress).run()
    for streams in runs:
        finish_run(streams[0].ws.cfg, {s.name: results[s.folder.path] for s in streams})


@contextlib.contextmanager
def connected(address: str | None):
    """Ray, joined for the block: a local instance started for it (and shut down after) unless this process
    has joined one already or an address is given."""
    try:
        import ray
    except ImportError as err:
        raise RunError("executor ray needs Ray: pip install 'continual-vlp[ray]' (or set executor=local)") from err
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, logging_level=logging.WARNING)  # (an unreachable address: Ray retries, saying so)
    try:
        yield ray
    finally:
        ray.shutdown()


# -- the worker's side ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """What a worker needs besides the config to compute as the driver would."""

    cwd: str  # relative paths in the config (data, host folder, run_dir) resolve from the driver's folder
    threads: int  # the driver's torch thread count
    import_paths: tuple[str, ...]  # where the config's `imports` were found
    log_level: int

    @classmethod
    def of_driver(cls, cfg: RunConfig) -> "Setup":
        return cls(os.getcwd(), torch.get_num_threads(), tuple(import_folders(cfg.imports)),
                   logging.getLogger("continual").getEffectiveLevel())


@dataclass(frozen=True)
class Job:
    """One stream of a run, as a worker rebuilds it."""

    cfg: RunConfig
    stream: str
    folder: str


_workspace: dict[str, Workspace] = {}  # the workspace this worker process loaded last, by its identity


def worker_stream(setup: Setup, job: Job) -> StreamRun:
    """The job's stream on this worker's workspace (loaded on the first task, kept for the next)."""
    os.chdir(setup.cwd)
    torch.set_num_threads(setup.threads)
    logging.getLogger("continual").setLevel(setup.log_level)
    for folder in setup.import_paths:
        if folder not in sys.path:
            sys.path.append(folder)
    import_modules(job.cfg.imports, Path(setup.cwd), "executor ray")
    cfg = job.cfg
    key = digest([cfg.host, cfg.device, asdict(cfg.data), {n: asdict(t) for n, t in cfg.tasks.items()},
                  sorted({s.task for stream in cfg.streams().values() for s in stream.steps}), cfg.held_out,
                  cfg.start_from])
    if key not in _workspace:
        _workspace.clear()  # one workspace per worker: a long-lived worker serves one run after another
        _workspace[key] = Workspace.open(cfg, progress=False)
    ws = dataclasses.replace(_workspace[key], cfg=cfg)
    steps, policy = cfg.streams()[job.stream]
    return StreamRun(ws, job.stream, steps, policy, RunFolder(job.folder))


def train_step(setup: Setup, job: Job, index: int, *below: dict) -> dict:
    """Train step ``index`` of the job's stream on top of ``below`` (the earlier steps' results, each with
    its module's folder): the record, the module's folder and the model's seconds."""
    stream = worker_stream(setup, job)
    step, stack = stream.steps[index], stream.new_stack()
    record = StepRecord(index, step.task, step.method, dict(step.config))
    tick, model_seconds = time.time(), stream.ws.clock.seconds
    try:
        with stream.folder.logging(), stream.at_step(index):
            stack_up(stream, stack, [b["folder"] for b in below])
            stream.train(index, step, record, stack)
    finally:
        stack.clear()
    record.train_seconds = time.time() - tick
    return {"record": record, "folder": str(stream.folder / record.module),
            "model_seconds": stream.ws.clock.seconds - model_seconds}


def evaluate_task(setup: Setup, job: Job, folders: list[str], j: int, row: int | None) -> dict:
    """Evaluate task ``j`` of the job's stream with the modules in ``folders`` on top of its starting ones
    (the stack after step ``row``; None: the zero-shot row)."""
    stream = worker_stream(setup, job)
    stack, model_seconds = stream.new_stack(), stream.ws.clock.seconds
    try:
        with stream.at_step(row) if row is not None else contextlib.nullcontext():
            stack_up(stream, stack, folders)
            metrics = stream.evaluate_task(stack, j)
    finally:
        stack.clear()
    return {"metrics": metrics, "model_seconds": stream.ws.clock.seconds - model_seconds}


def stack_up(stream: StreamRun, stack: Stack, folders: list[str]) -> None:
    stream.push_start(stack)
    for folder in folders:
        stack.push(load_module(folder, stream.ws.host))


def task_resources(run: Resources, step: Resources | None, threads: int, cuda: bool) -> dict[str, float]:
    """What a task asks Ray for: the step's resources over the run's. Unset, on CPU a task holds as many CPUs
    as it computes with (``threads``, the driver's: more tasks than cores would make their threads fight
    for them); on CUDA, one GPU and one CPU."""
    own = {k: v for k, v in asdict(step).items() if v is not None} if step else {}
    merged = dataclasses.replace(run, **own)
    return {"num_cpus": (1 if cuda else threads) if merged.num_cpus is None else merged.num_cpus,
            "num_gpus": (1 if cuda else 0) if merged.num_gpus is None else merged.num_gpus}


def module_folder(folder: RunFolder, record: StepRecord) -> str:
    """The absolute folder of a step's module (what a worker on another node opens)."""
    return str((folder / record.module).resolve())


def import_folders(names: list[str]) -> list[str]:
    """The folders from which the config's ``imports`` were imported here (a worker looks there too)."""
    found = []
    for name in names:
        module = sys.modules.get(name)
        if module is None or not getattr(module, "__file__", None):
            continue
        path = Path(module.__file__).resolve().parent
        if Path(module.__file__).name == "__init__.py":
            path = path.parent
        for _ in range(name.count(".")):
            path = path.parent
        found.append(str(path))
    return list(dict.fromkeys(found))


# -- the driver's side ------------------------------------------------------------------------------------
@dataclass
class Training:
    """A node of the graph: one distinct training, trained in its owner's folder (``Grid.owners``)."""

    ref: Any  # the Ray task's result
    waits_on: list = field(default_factory=list)  # the trainings it stacks on that were running at submission


@dataclass
class Submitted:
    """A row whose module is on the driver's stack and whose evaluations are asked (their keys by task index)."""

    record: StepRecord
    keys: dict[int, str] = field(default_factory=dict)


@dataclass
class Rows:
    """The driver's view of one stream: its zero-shot row and the rows whose evaluations are asked, until
    they are written to state.json."""

    stream: StreamRun
    zero_shot: dict[int, str] = field(default_factory=dict)  # task index -> evaluation key, until written
    submitted: list[Submitted] = field(default_factory=list)  # rows asked, not yet written
    started: float = field(default_factory=time.time)
    model_seconds: float = 0.0
    board: Any = None
    finished: bool = False

    @property
    def next_row(self) -> int:
        return len(self.stream.state.records) + len(self.submitted)

    def folders(self) -> list[str]:
        """The modules above the starting ones after the last asked row: the written rows', the asked rows'."""
        records = [*self.stream.state.records, *(row.record for row in self.submitted)]
        return [module_folder(self.stream.folder, r) for r in records if r.module]


class Grid:
    """The run's streams as one Ray task graph, driven to their results."""

    def __init__(self, ray, streams: list[StreamRun], progress: bool | None):
        self.ray, self.streams = ray, streams
        ws = streams[0].ws
        self.trained, self.evaluated = ws.trained, ws.evaluated  # shared by every stream of the run, as locally
        self.setup = Setup.of_driver(ws.cfg)
        self.cuda = resolve_device(ws.cfg.device).type == "cuda"
        self.largest = {kind: max((node["Resources"].get(kind, 0) for node in ray.nodes() if node["Alive"]), default=0)
                        for kind in ("CPU", "GPU")}  # what the largest node offers
        self.trainings: dict[str, Training] = {}
        # training key -> the first stream that has the step: the one the local executor trains it in, and
        # the one the others name as reused_from, whichever stream finished it first before a resume
        self.owners: dict[str, StreamRun] = {}
        for stream in streams:
            for index in stream.train_configs:
                self.owners.setdefault(stream.training_key(index), stream)
        self.evaluating: dict[str, Any] = {}  # evaluation key -> its task's reference, while it runs
        self.pending: dict[Any, tuple[str, str, Rows | None]] = {}  # reference -> (kind, key, the stream asking)
        self.rows: list[Rows] = []
        self.results: dict[Path, dict] = {}
        self.closing = contextlib.ExitStack()  # the streams' TensorBoard writers
        env = {k: v for k, v in os.environ.items() if k.startswith("CONTINUAL_")}  # cache folder, fault injection
        self.env = {"runtime_env": {"env_vars": env}} if env else {}
        self.train_remote = ray.remote(max_retries=MAX_RETRIES)(train_step)
        self.evaluate_remote = ray.remote(max_retries=MAX_RETRIES)(evaluate_task)
        total = sum(len(s.steps) - len(s.state.records) for s in streams)
        self.bar = tqdm(total=total, desc="grid", unit="step", disable=not (
            default_progress() if progress is None else progress))

    def options(self, stream: StreamRun, index: int | None = None) -> dict:
        """Ray's options for a task of ``stream`` (of its step ``index``; None: an evaluation)."""
        step = stream.steps[index].resources if index is not None else None
        asked = task_resources(stream.ws.cfg.resources, step, self.setup.threads, self.cuda)
        for name, amount in (("CPU", asked["num_cpus"]), ("GPU", asked["num_gpus"])):
            if amount > self.largest.get(name, 0):  # (a warning: an autoscaling cluster may add such a node)
                warn_once(f"executor ray: a task asks for {amount:g} {name}(s), but no node of the Ray cluster has "
                          f"that many ({self.largest.get(name, 0):g} at most): it waits until one joins (set "
                          f"resources.num_{name.lower()}s{', or OMP_NUM_THREADS for the threads' if name == 'CPU' else ''})")
        return {**asked, **self.env}

    @staticmethod
    def job(stream: StreamRun) -> Job:
        return Job(stream.ws.cfg, stream.name, str(stream.folder.path.resolve()))

    # -- building the graph ----------------------------------------------------------------------------------
    def run(self) -> dict[Path, dict]:
        try:
            for stream in self.streams:
                self.rows.append(self.open(stream))
            for rows in self.rows:
                self.submit_trainings(rows.stream)
            log.info("executor ray: %d stream(s), %d training(s) to run, %s", len(self.streams),
                     len(self.trainings), self.ray.cluster_resources())
            while True:
                for rows in self.rows:
                    self.advance(rows)
                if all(rows.finished for rows in self.rows):
                    return self.results
                self.wait()
        except BaseException:
            for ref in self.pending:
                self.ray.cancel(ref)
            raise
        finally:
            self.bar.close()
            self.closing.close()

    def open(self, stream: StreamRun) -> Rows:
        """The stream's finished steps there for others to reuse; its zero-shot row asked."""
        stream.folder.path.mkdir(parents=True, exist_ok=True)
        rows = Rows(stream)
        with stream.folder.logging():
            rows.zero_shot = self.ask(rows, stream.zero_shot_missing(), row=None, folders=[])
        for record in stream.state.records:
            stream.remember(record)
        return rows

    def submit_trainings(self, stream: StreamRun) -> None:
        """A training task for each unfinished step of the stream that no earlier stream trains."""
        finished = stream.state.records
        below: list = [{"folder": module_folder(stream.folder, r)} for r in finished if r.module]
        for index in range(len(finished), len(stream.steps)):
            if index not in stream.train_configs:
                continue
            key = stream.training_key(index)
            if key not in self.trainings and key not in self.trained:
                ref = self.train_remote.options(**self.options(stream, index)).remote(
                    self.setup, self.job(stream), index, *below)
                self.trainings[key] = Training(ref, [b for b in below if not isinstance(b, dict)])
                self.pending[ref] = ("train", key, None)
            below.append(self.module_input(key))

    def module_input(self, key: str):
        """What a step above training ``key`` takes: the finished module's folder, or the running task's
        reference (Ray hands the step its result when it is done)."""
        done = self.trained.get(key)
        return {"folder": module_folder(done.folder, done.record)} if done else self.trainings[key].ref

    def ask(self, rows: Rows, indices: list[int], row: int | None, folders: list[str]) -> dict[int, str]:
        """The evaluation keys of tasks ``indices`` with the modules in ``folders`` on top of the starting ones;
        a task for each key that is neither evaluated nor being evaluated."""
        stream = rows.stream
        stack = stream.new_stack()  # for this alone: modules of two stacks on the host would mix their outputs
        try:
            stack_up(stream, stack, folders)
            keys = stream.evaluation_keys(stack, indices)
        finally:
            stack.clear()
        for j, key in keys.items():
            if key in self.evaluated or key in self.evaluating:
                continue
            ref = self.evaluate_remote.options(**self.options(stream)).remote(
                self.setup, self.job(stream), folders, j, row)
            self.evaluating[key] = ref
            self.pending[ref] = ("evaluate", key, rows)
        return keys

    # -- driving it ------------------------------------------------------------------------------------------
    def wait(self) -> None:
        """Until one task ends: its result recorded (a training: the step's Done; an evaluation: its statistics)."""
        (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
        kind, key, rows = self.pending.pop(ref)
        result = self.result(ref, kind, key)
        if kind == "train":
            owner = self.owners[key]
            owner.remember(result["record"])
            self.rows_of(owner).model_seconds += result["model_seconds"]
        else:
            self.evaluated[key] = result["metrics"]
            del self.evaluating[key]
            rows.model_seconds += result["model_seconds"]
        self.show()

    def result(self, ref, kind: str, key: str):
        from ray.exceptions import RayTaskError, WorkerCrashedError

        try:
            return self.ray.get(ref)
        except RayTaskError as err:
            if isinstance(err.cause, ContinualError):  # said as the local executor says it, one line
                raise err.cause from None
            raise
        except WorkerCrashedError as err:
            raise RunError(f"executor ray: the worker of a {kind} task died {MAX_RETRIES + 1} times "
                           f"(key {key[:12]}); Ray's logs (/tmp/ray/session_latest/logs) say why") from err

    def rows_of(self, stream: StreamRun) -> Rows:
        return next(rows for rows in self.rows if rows.stream is stream)

    def advance(self, rows: Rows) -> None:
        """Rows whose modules are trained get their evaluations asked; rows whose evaluations are in are
        written, in order; a stream with every row written gets its results."""
        stream = rows.stream
        if rows.finished:
            return
        while rows.next_row < len(stream.steps):
            record = self.trained_row(stream, rows.next_row)
            if record is None:
                break
            rows.submitted.append(Submitted(record))  # (before asking: its module goes with the tasks)
            rows.submitted[-1].keys = self.ask(rows, stream.evaluated_after(record.index), record.index,
                                               rows.folders())
        if rows.zero_shot and all(key in self.evaluated for key in rows.zero_shot.values()):
            stream.state.zero_shot.update(self.metrics(stream, rows.zero_shot))
            rows.zero_shot = {}
            stream.save_state()
        while not rows.zero_shot and rows.submitted and all(k in self.evaluated for k in rows.submitted[0].keys.values()):
            record, keys = rows.submitted[0].record, rows.submitted.pop(0).keys
            record.metrics = self.metrics(stream, keys)
            stream.state.records.append(record)
            with stream.folder.logging():
                stream.log_metrics(record)
                log.info("[%s] %d of %d step(s) written, %d computing, %d waiting", stream.name, *self.tally(rows))
            if rows.board is None:
                rows.board = self.closing.enter_context(stream.folder.tensorboard())
            stream.log_row(rows.board, record)
            stream.save_state()
            self.bar.update()
        if len(stream.state.records) == len(stream.steps):
            self.results[stream.folder.path] = stream.finish(time.time() - rows.started, rows.model_seconds)
            rows.finished = True

    def trained_row(self, stream: StreamRun, index: int) -> StepRecord | None:
        """Step ``index``'s record once its training is done (None before): the owner's record, another
        stream's reused (its module copied), or a `none` step's."""
        step = stream.steps[index]
        if step.method == NO_MODULE:
            return StepRecord(index, step.task, step.method, dict(step.config), train_seconds=0.0)
        done = self.trained.get(stream.training_key(index))
        if done is None:
            return None
        owner = self.owners[stream.training_key(index)]
        if owner is not stream:
            with stream.folder.logging():
                record = stream.reuse(index, Done(done.record, owner.name, done.folder))
        else:  # its own training (a stream after it may have written it first, before a resume)
            if done.folder.path != stream.folder.path:
                stream.folder.copy_module(done.folder, done.record.module)
            record = dataclasses.replace(done.record, metrics={}, reused_from=None)
        return record

    def metrics(self, stream: StreamRun, keys: dict[int, str]) -> dict[str, dict]:
        return {stream.eval_tasks[j].name: self.evaluated[key] for j, key in keys.items()}

    def tally(self, rows: Rows) -> tuple[int, int, int, int]:
        """A stream's steps written, its steps in all, those computing (training with their inputs ready, or
        their row evaluating) and those waiting (on a step below, or for the rows before theirs)."""
        stream = rows.stream
        written, computing = len(stream.state.records), len(rows.submitted)
        for index in range(rows.next_row, len(stream.steps)):
            node = self.trainings.get(stream.training_key(index)) if index in stream.train_configs else None
            computing += bool(node and node.ref in self.pending and not any(r in self.pending for r in node.waits_on))
        return written, len(stream.steps), computing, len(stream.steps) - written - computing

    def show(self) -> None:
        """The bar's tally: trainings running (inputs ready) and waiting (on a step below), evaluations."""
        trainings = [node for node in self.trainings.values() if node.ref in self.pending]
        waiting = sum(any(ref in self.pending for ref in node.waits_on) for node in trainings)
        self.bar.set_postfix_str(f"training {len(trainings) - waiting} running, {waiting} waiting; "
                                 f"evaluating {len(self.evaluating)}")
