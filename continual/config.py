"""Experiment configs: one YAML file describes a stream (or a study of several).

The schema is a tree of dataclasses; omegaconf merges the YAML file and the
command line's ``key=value`` overrides onto it and checks names and types.
Our checks on top: the nearest valid key for a misspelt one, values in range,
methods and tasks that exist, and streams that make sense, all before any
model is loaded.

    name: compat
    host: builtin:tiny-base
    tasks:                      # the catalogue: name -> data
      base: {data: synthetic:base}
      aquarium: {data: synthetic:aquarium}
    stream:                     # one stream ...
      - {task: base, method: adapter}
      - {task: aquarium, method: sdpt, config: {k: 10}, train: {steps: 600}}
    settings:                   # ... or a study: several named streams
      adapter+sdpt: [{task: base, method: adapter}, {task: aquarium, method: sdpt}]
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from continual.training import TrainConfig
from evaluation.summary import policy_setting, swept_setting
from continual.errors import ContinualError

NO_MODULE = "none"  # a stream step that trains nothing: the zero-shot setting
PRECISIONS = ("auto", "fp32", "bf16")  # of the forward (continual.loop.autocast)
EVALUATE = ("stream", "seen")
EXECUTORS = ("local", "ray")  # where a run's steps compute (continual.ray_executor)


class ConfigError(ContinualError, ValueError):
    """A config that cannot run: unknown key, wrong type, bad value, unknown method or task."""


@dataclass
class TaskConfig:
    data: str = "???"  # synthetic:WORLD, coco:FOLDER, or a dataset folder of the task's kind
    kind: str = "detection"  # or classification
    phrases: dict[str, str] = field(default_factory=dict)  # category name -> prompt phrase
    shots: Optional[int] = None  # classification: K training images per class (seeded by data.seed)
    template: str = "a photo of a {}."  # classification: the class sentence around each phrase
    val_split: str = "val"  # detection: the split evaluated (GLIP's ODinW protocol: mini_val for two sets)


@dataclass
class Resources:
    """What each Ray task of a run asks for (``executor: ray``)."""

    num_cpus: Optional[float] = None  # CPUs a task holds (None: 1 on CUDA; on CPU, the torch threads it computes with)
    num_gpus: Optional[float] = None  # GPUs, or a share of one (None: 1 where the device is CUDA, else 0)


@dataclass
class StepConfig:
    task: str = "???"  # a name in `tasks`
    method: str = "sdpt"  # or "none": evaluate the task without training a module
    config: dict[str, Any] = field(default_factory=dict)  # the method's config
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the run's `train`
    resources: Resources = field(default_factory=Resources)  # executor ray: overrides of the run's `resources`


class Stream(NamedTuple):
    """One stream of a run: its steps and the composition policy it is evaluated under."""

    steps: list[StepConfig]
    policy: str


@dataclass
class DataConfig:
    """Sizes of the synthetic worlds (COCO folders are used as they are) and how real data's faults are met."""

    train_images: int = 400  # synthetic worlds: training images
    val_images: int = 100  # synthetic worlds: validation images
    image_size: int = 128  # synthetic worlds: pixels per side
    seed: int = 0  # synthetic worlds and few-shot draws (not the training seed: train.seed)
    strict: bool = False  # refuse a COCO file with any bad annotation (default: skip, count and name them)
    keep_supercategories: bool = False  # keep boxless supercategories (Roboflow's id 0) in the prompt


@dataclass
class RunConfig:
    name: str = "run"  # the run's name (and its default folder)
    run_dir: str = "runs/${name}"  # where everything the run writes goes
    host: str = "builtin:tiny-base"  # builtin:NAME, a save_pretrained folder or a Hugging Face id
    device: str = "auto"  # auto: cuda when present
    precision: str = "auto"  # of the forward: fp32 | bf16 (autocast; trained weights stay fp32) | auto (bf16 on CUDA)
    # Data loading processes for training and evaluation. Not under `train`: a step's train settings are its
    # identity, and the number of workers changes no result.
    num_workers: int = 0
    # Where the steps compute: local (this process) | ray (each step and evaluation a Ray task; the same
    # results). Not part of any identity: a run may resume under the other executor.
    executor: str = "local"
    ray_address: Optional[str] = None  # an existing Ray cluster (else RAY_ADDRESS, else a local Ray for the run)
    resources: Resources = field(default_factory=Resources)  # what each Ray task asks for
    seeds: list[int] = field(default_factory=list)  # run the whole config once per seed (train seed), summarised
    policy: str = "all"  # composition at evaluation: all | own | route
    policies: list[str] = field(default_factory=list)  # each stream (setting) once per policy (replaces policy)
    route_threshold: Optional[float] = None  # route: also match phrases this similar (cosine); None: exact only
    evaluate: str = "stream"  # after each step: every task of the stream | the tasks seen so far
    held_out: list[str] = field(default_factory=list)  # evaluated after every step, never trained
    eval_batch_size: int = 16  # images per evaluation batch
    checkpoint_every: int = 100  # steps between mid-task checkpoints (0: task ends only)
    feature_cache: bool = True  # cache the outputs of frozen trunks that the trained module does not act inside
    feature_cache_mb: int = 4096  # memory the cache may hold
    data: DataConfig = field(default_factory=DataConfig)  # synthetic world sizes, real data's faults
    train: TrainConfig = field(default_factory=TrainConfig)  # how each module trains (a step may override)
    start_from: list[str] = field(default_factory=list)  # module folders stacked before the first task
    tasks: dict[str, TaskConfig] = field(default_factory=dict)  # the catalogue: name -> data, kind, phrases
    stream: list[StepConfig] = field(default_factory=list)  # the steps, in order
    settings: dict[str, list[StepConfig]] = field(default_factory=dict)  # a study: named streams (not with stream)
    imports: list[str] = field(default_factory=list)  # user modules that register methods or hosts, e.g. my_method
    # the frontier: each setting's last module at these multiples of its own learning rate (its step's, the
    # run's train.lr, or the method's default)
    lr_sweep: list[float] = field(default_factory=list)

    def streams(self) -> dict[str, Stream]:
        """Named streams: the settings of a study, or the one stream under the run's name; with ``policies``,
        each of them once per policy (SETTING@policy=P); with ``lr_sweep``, each of those once per multiple
        of its last step's learning rate (SETTING@lr=RATE; a step that trains nothing is not swept)."""
        named = dict(self.settings) if self.settings else {self.name: list(self.stream)}
        streams = ({policy_setting(name, p): Stream(steps, p) for name, steps in named.items() for p in self.policies}
                   if self.policies else {name: Stream(steps, self.policy) for name, steps in named.items()})
        if not self.lr_sweep:
            return streams
        from prompts import METHODS

        swept = {}
        for name, (steps, policy) in streams.items():
            last = steps[-1]
            if last.method == NO_MODULE or last.method not in METHODS:  # (an unknown method: validate names it)
                swept[name] = Stream(steps, policy)
                continue
            own = last.train.get("lr") or self.train.lr or METHODS[last.method].default_lr
            for factor in self.lr_sweep:
                lr = float(f"{own * factor:.6g}")  # 0.3 x 0.1 is 0.03, not 0.030000000000000002
                swept[swept_setting(name, lr)] = Stream([*steps[:-1], dataclasses.replace(last, train={
                    **last.train, "lr": lr})], policy)
        return swept

    @property
    def is_study(self) -> bool:
        return bool(self.settings or self.lr_sweep or self.policies)


def _nearest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(valid))}"


def _check_keys(value: Any, schema: Any, path: str, where: str) -> None:
    """Refuse keys the schema does not have, naming the nearest valid one."""
    if dataclasses.is_dataclass(schema):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {path or 'the config'} must be a mapping of {schema.__name__} fields, "
                              f"got {type(value).__name__}")
        hints = typing.get_type_hints(schema)
        for key, item in value.items():
            if key not in hints:
                raise ConfigError(f"{where}: unknown config key {path + str(key)!r}{_nearest(str(key), hints)}")
            _check_keys(item, hints[key], f"{path}{key}.", where)
        return
    origin, args = typing.get_origin(schema), typing.get_args(schema)
    if origin is typing.Union:  # Optional[X]
        _check_keys(value, next(a for a in args if a is not type(None)), path, where)
    elif origin is dict and isinstance(value, dict):
        for key, item in value.items():
            _check_keys(item, args[1], f"{path}{key}.", where)
    elif origin is list and isinstance(value, (list, dict)):  # a dict: list entries by index (command line)
        for i, item in (enumerate(value) if isinstance(value, list) else value.items()):
            _check_keys(item, args[0], f"{path}{i}.", where)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config, apply ``key=value`` overrides, check everything; raise ConfigError on any fault.

        cfg = load_config("configs/smoke.yaml", ["train.steps=50", "policy=own"])
    """
    cfg: RunConfig = load_structured(path, overrides, RunConfig)
    import_modules(cfg.imports, Path(path).parent, str(path))
    validate(cfg, str(path))
    return cfg


def import_modules(names: list[str], folder: Path, where: str) -> None:
    """A config's ``imports``: user modules whose ``register_method`` / ``register_host`` decorators make their
    classes known. They are found as Python finds modules, then in the working folder and the config's
    folder (searched last, so a user's file never shadows an installed package)."""
    import importlib
    import sys

    for place in (Path.cwd(), folder.resolve()):
        if str(place) not in sys.path:
            sys.path.append(str(place))
    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ConfigError(f"{where}: imports.{i}: cannot import {name!r} ({err}); a module on the Python path, "
                              f"in the working folder or beside the config") from err


def load_structured(path: str | Path, overrides: list[str] | tuple[str, ...], schema: type):
    """A YAML file with ``key=value`` overrides as a ``schema`` object: keys and types checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = OmegaConf.load(path)
    except Exception as err:  # yaml's scanner/parser errors have no common base we can import cleanly
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: a config is a mapping of keys, got {type(raw).__name__}")
    _check_keys(OmegaConf.to_container(raw), schema, "", str(path))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), raw)
    except (OmegaConfBaseException, TypeError) as err:
        raise ConfigError(f"{path}: bad value for {getattr(err, 'full_key', None) or '?'!r}: "
                          f"{str(err).splitlines()[0]}") from err
    return apply_overrides(merged, overrides, schema, str(path))


def apply_overrides(base: DictConfig, overrides: list[str] | tuple[str, ...], schema: type, where: str) -> Any:
    """``base`` with ``key=value`` overrides applied, as a ``schema`` object; ConfigError on any fault."""
    try:
        for item in overrides:  # one by one: update() also reaches list entries (stream.1.method=...)
            key, value = _split_override(item, schema)
            OmegaConf.update(base, key, OmegaConf.from_dotlist([f"value={value}"])["value"], merge=True)
        return OmegaConf.to_object(base)
    except (OmegaConfBaseException, TypeError, IndexError) as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{where}: bad value for {key!r}: {str(err).splitlines()[0]}") from err


def _split_override(item: str, schema: type) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"command line: {item!r} is not key=value (e.g. train.steps=50)")
    try:
        _check_keys(OmegaConf.to_container(OmegaConf.from_dotlist([item])), schema, "", "command line")
    except OmegaConfBaseException as err:
        raise ConfigError(f"command line: bad override {item!r} ({str(err).splitlines()[0]})") from err
    return key, value


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def step_train_config(cfg, step: StepConfig, where: str = "config") -> TrainConfig:
    """The ``train`` section of ``cfg`` (a run's or a few-shot grid's) with the step's overrides on top."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cfg.train), step.train))
    except OmegaConfBaseException as err:
        raise ConfigError(f"{where}: bad train override for task {step.task!r}: {str(err).splitlines()[0]}") from err


def check_positive(where: str, values: dict[str, float | None], allow_zero: tuple[str, ...] = ()) -> None:
    for key, value in values.items():
        if value is None:
            continue
        if value < 0 or (value == 0 and key not in allow_zero):
            raise ConfigError(f"{where}: {key} must be {'>= 0' if key in allow_zero else '> 0'}, got {value}")


def check_train(where: str, prefix: str, train: TrainConfig, warn: bool = True) -> None:
    """Values in range (ConfigError); ``warn``: also say when warm-up outlasts the steps."""
    values = {"steps": train.steps, "batch_size": train.batch_size, "lr": train.lr,
              "weight_decay": train.weight_decay, "warmup": train.warmup, "clip": train.clip}
    check_positive(where, {prefix + k: v for k, v in values.items()},
                   allow_zero=(f"{prefix}weight_decay", f"{prefix}warmup"))
    if warn and train.warmup >= train.steps:
        warn_once(f"{where}: {prefix}warmup {train.warmup} is not below {prefix}steps {train.steps}: the learning "
                  f"rate never reaches its peak (set {prefix}warmup lower)")


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """A config that runs, but likely not as meant: logged once per process."""
    if message not in _warned:
        _warned.add(message)
        logging.getLogger(__name__).warning(message)


def _check_kind(where: str, at: str, kind: str, host) -> None:
    if kind not in host.task_kinds:
        raise ConfigError(f"{where}: {at}: a {kind} task, but the host is a {host.kind}, which supports "
                          f"{', '.join(host.task_kinds)}")


def validate(cfg: RunConfig, where: str) -> None:
    """Everything that can be checked before a model or a dataset is loaded."""
    from continual.hosts.base import HostError, host_class
    from prompts import METHODS, POLICIES, MethodError, build_module
    from prompts.base import check_sites
    from tasks.kinds import TASK_KINDS
    from tasks.worlds import WORLDS

    if cfg.policy not in POLICIES:
        raise ConfigError(f"{where}: policy must be one of {POLICIES}, got {cfg.policy!r}")
    if not set(cfg.policies) <= set(POLICIES) or len(set(cfg.policies)) != len(cfg.policies):
        raise ConfigError(f"{where}: policies must be distinct names from {POLICIES}, got {cfg.policies}")
    if cfg.policies and cfg.policy != "all":
        raise ConfigError(f"{where}: give either `policy` (one) or `policies` (each stream once per policy), "
                          f"not both (got policy {cfg.policy!r} and policies {cfg.policies})")
    if any(lr <= 0 for lr in cfg.lr_sweep) or len(set(cfg.lr_sweep)) != len(cfg.lr_sweep):
        raise ConfigError(f"{where}: lr_sweep must be distinct factors > 0 of each last step's learning rate, "
                          f"got {cfg.lr_sweep}")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"{where}: seeds must be distinct, got {cfg.seeds}")
    routed = "route" in (cfg.policies or [cfg.policy])
    if cfg.route_threshold is not None and not (-1 <= cfg.route_threshold <= 1 and routed):
        raise ConfigError(f"{where}: route_threshold is a cosine similarity in [-1, 1] for policy route, got "
                          f"{cfg.route_threshold} with policy {cfg.policies or cfg.policy!r}")
    if cfg.evaluate not in EVALUATE:
        raise ConfigError(f"{where}: evaluate must be one of {EVALUATE}, got {cfg.evaluate!r}")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError(f"{where}: device must be auto, cpu or cuda[:N], got {cfg.device!r}")
    if cfg.executor not in EXECUTORS:
        raise ConfigError(f"{where}: executor must be one of {EXECUTORS}, got {cfg.executor!r}")
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"{where}: precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    check_positive(where, {"data.train_images": cfg.data.train_images, "data.val_images": cfg.data.val_images,
                      "data.image_size": cfg.data.image_size, "eval_batch_size": cfg.eval_batch_size,
                      "checkpoint_every": cfg.checkpoint_every, "feature_cache_mb": cfg.feature_cache_mb,
                      "num_workers": cfg.num_workers},
              allow_zero=("checkpoint_every", "feature_cache_mb", "num_workers"))
    check_train(where, "train.", cfg.train)
    check_positive(where, {"resources.num_cpus": cfg.resources.num_cpus, "resources.num_gpus": cfg.resources.num_gpus},
                   allow_zero=("resources.num_cpus", "resources.num_gpus"))
    try:
        host = host_class(cfg.host)
    except HostError as err:
        raise ConfigError(f"{where}: host: {err}") from err
    for name, task in cfg.tasks.items():
        if task.kind not in TASK_KINDS:
            raise ConfigError(f"{where}: tasks.{name}.kind: must be one of {tuple(TASK_KINDS)}, got {task.kind!r}"
                              f"{_nearest(task.kind, TASK_KINDS)}")
        kind = TASK_KINDS[task.kind]
        if task.shots is not None and (not kind.takes_shots or task.shots < 1):
            raise ConfigError(f"{where}: tasks.{name}.shots: a positive number of images per class, for "
                              f"classification tasks only (got {task.shots} on a {task.kind} task)")
        if task.val_split != "val" and not kind.takes_val_split:
            raise ConfigError(f"{where}: tasks.{name}.val_split: for detection tasks only (got {task.val_split!r} "
                              f"on a {task.kind} task)")
        if "{}" not in task.template:
            raise ConfigError(f"{where}: tasks.{name}.template: must contain {{}} where the class phrase goes, "
                              f"got {task.template!r}")
        if task.data.startswith("synthetic:"):
            world = task.data.split(":", 1)[1]
            if world not in WORLDS:
                raise ConfigError(f"{where}: tasks.{name}.data: unknown world {world!r}{_nearest(world, WORLDS)}")
        elif not Path(task.data.removeprefix("coco:")).is_dir():
            raise ConfigError(f"{where}: tasks.{name}.data: {task.data!r} is neither synthetic:WORLD "
                              f"({', '.join(WORLDS)}) nor an existing dataset folder")
    if cfg.stream and cfg.settings:
        raise ConfigError(f"{where}: give either `stream` (one stream) or `settings` (a study), not both")
    streams = cfg.streams()
    for setting, (steps, _) in streams.items():
        label = f"settings.{setting}" if cfg.is_study else "stream"
        if not steps:
            raise ConfigError(f"{where}: {label} is empty; list at least one {{task, method}} step")
        seen = set()
        for i, step in enumerate(steps):
            at = f"{label}.{i}"
            if step.task not in cfg.tasks:
                raise ConfigError(f"{where}: {at}.task: unknown task {step.task!r}{_nearest(step.task, cfg.tasks)}"
                                  if cfg.tasks else f"{where}: {at}.task: {step.task!r} but the config has no `tasks`")
            if step.task in seen:
                raise ConfigError(f"{where}: {at}.task: task {step.task!r} appears twice in {label}")
            seen.add(step.task)
            _check_kind(where, f"{at}.task", cfg.tasks[step.task].kind, host)
            if step.method != NO_MODULE:
                if step.method not in METHODS:
                    raise ConfigError(f"{where}: {at}.method: unknown method {step.method!r}"
                                      f"{_nearest(step.method, [*METHODS, NO_MODULE])}")
                try:
                    module = build_module(step.method, step.config)
                except (MethodError, TypeError, ValueError) as err:
                    raise ConfigError(f"{where}: {at}.config: {err}") from err
                try:
                    check_sites(module, host.kind, host.site_kinds)
                except MethodError as err:
                    raise ConfigError(f"{where}: {at}.method: {err} (host {cfg.host})") from err
            check_positive(where, {f"{at}.resources.{k}": v for k, v in dataclasses.asdict(step.resources).items()},
                           allow_zero=tuple(f"{at}.resources.{k}" for k in ("num_cpus", "num_gpus")))
            check_train(where, f"{at}.train.", step_train_config(cfg, step, where),
                        warn=bool({"steps", "warmup"} & set(step.train)))  # (else the run's `train` said it)
        for name in cfg.held_out:
            if name not in cfg.tasks:
                raise ConfigError(f"{where}: held_out: unknown task {name!r}{_nearest(name, cfg.tasks)}")
            _check_kind(where, "held_out", cfg.tasks[name].kind, host)
            if name in seen:
                raise ConfigError(f"{where}: held_out: task {name!r} is also trained in {label}")
    for folder in cfg.start_from:
        if not Path(folder).is_dir():
            raise ConfigError(f"{where}: start_from: module folder {folder!r} not found")
