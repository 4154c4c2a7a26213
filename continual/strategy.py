"""The engine's training strategy: Avalanche's loop with one step plan at a time, for every host and task kind.

Tasks become an Avalanche benchmark (one training experience per stream step,
one test experience per evaluated task). The host sits behind ``HostModel``,
which computes its own loss (the torchvision detection convention that
Avalanche's ``ObjectDetectionTemplate`` expects): ``model(images, targets,
task) -> {"loss": ...}`` in training, per-image predictions in evaluation.
That convention fits every task kind, so one strategy serves detection and
classification alike. Its training and evaluation loops, plugin callbacks,
EvaluationPlugin and loggers stay Avalanche's. Replaced, each for a reason:
- ``make_optimizer``: the stacking plugin builds AdamW over the new module
  alone; Avalanche's would register every parameter of the model.
- ``make_train_dataloader``: one Avalanche epoch covers the step's whole
  budget, in a seeded order that can restart at any step (``StepSampler``), so
  a killed run resumes mid-task on the same batches; with several processes
  each rank takes its slice of every global batch.
- ``make_eval_dataloader``: the split in order, or this rank's shard of it.
- ``backward``: then the gradients are averaged over ranks (continual.distributed).
- ``optimizer_step``: warm-up + cosine learning rate and gradient clipping
  (``continual.training``).
- ``forward``: the current experience's task goes to the model explicitly;
  bf16 autocast on CUDA (fp16 with a scaler is Avalanche's).
- ``_unpack_minibatch``: moves the targets' tensors and leaves their text (VQA
  questions) alone; Avalanche's calls ``.to`` on every value.

State is explicit: ``train_step(plan, experience)`` takes a ``StepPlan`` (what
to train, how, and the checkpoint to resume from); the plugins read
``strategy.plan`` and nothing else of the engine.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils.detection_dataset import make_detection_dataset
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised.naive_object_detection import ObjectDetectionTemplate, detection_collate_fn
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from continual import distributed
from continual.hosts.base import Batch
from continual.training import TrainConfig, lr_at


@dataclass
class StepPlan:
    """One stream step to train: its position, task, method and settings; ``resume`` a mid-step checkpoint."""

    index: int
    task: Any  # tasks.task.Task
    method: str
    config: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    resume: dict | None = None  # {step, module, optimizer, rng, losses} of a checkpoint inside this step


class HostModel(nn.Module):
    """The host behind the torchvision-style interface, for any task kind.

    Training: ``model(images, targets, task) -> {"loss": total}``. Evaluation:
    ``model(images, targets, task)`` -> the host's per-image predictions (the
    targets only lend their questions, for VQA).
    """

    def __init__(self, host):
        super().__init__()
        self.host = host

    def forward(self, images, targets=None, task=None):
        batch = Batch.of(task, self.host.pixel_batch(list(images)), targets, train=self.training)
        if self.training:
            loss, _ = self.host.loss(batch)
            return {"loss": loss}
        return self.host.predict(batch)


class PixelCache:
    """Images as the host's processor sizes them (uint8), kept up to ``max_mb``: the settings, seeds and
    epochs of a run then decode and resize each image once (a processor call costs about 1 ms here, even
    for an image already at its size). Filled first come, never evicted."""

    def __init__(self, to_pixels, max_mb: int = 1024):
        self.to_pixels, self.room = to_pixels, max_mb * 2**20
        self._kept: dict[tuple[int, int], torch.Tensor] = {}
        self._sources: dict[int, Any] = {}  # the data objects keyed by id, kept alive so no id is reused

    def __call__(self, data, index: int) -> torch.Tensor:
        key = (id(data), index)
        if key in self._kept:
            return self._kept[key]
        pixels = self.to_pixels(data.open_image(index))
        if pixels.nbytes <= self.room:
            self._sources[id(data)] = data
            self._kept[key] = pixels
            self.room -= pixels.nbytes
        return pixels


class HostInputs(Dataset):
    """A task's split as (pixels, target) pairs of tensors, as Avalanche moves them to the device: each image
    as the host's processor sizes it (uint8; images of one batch may differ in size, the host pads them).

    Targets are built once (Avalanche keeps them as the dataset's targets too);
    text in them (a VQA question) stays text.
    """

    def __init__(self, data, pixels: PixelCache):
        self.data = data
        self.pixels = pixels
        self.targets = [{k: v if isinstance(v, str) else torch.as_tensor(v) for k, v in data.target(i).items()}
                        for i in range(len(data))]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.pixels(self.data, index), self.targets[index]


def task_dataset(data, pixels: PixelCache, task_label: int):
    """A split as an Avalanche dataset whose minibatches are (images, targets) lists, whatever the kind."""
    inputs = HostInputs(data, pixels)
    return make_detection_dataset(inputs, task_labels=task_label, targets=inputs.targets,
                                  collate_fn=detection_collate_fn)


def build_benchmark(train: list, test: list, pixels: PixelCache):
    """One training experience per stream step, one test experience per evaluated task (splits given)."""
    return benchmark_from_datasets(train=[task_dataset(d, pixels, i) for i, d in enumerate(train)],
                                   test=[task_dataset(d, pixels, i) for i, d in enumerate(test)])


class StepSampler(Sampler[int]):
    """Indices for ``steps`` batches: seeded permutations of the data back to back, from batch ``start`` on.

    With ``world`` > 1 processes, rank ``rank`` gets its contiguous slice of every global batch of
    ``batch_size`` (its loader's batch is ``batch_size // world``), so the ranks together see exactly the
    batches one process would.
    """

    def __init__(self, size: int, batch_size: int, steps: int, seed: int, start: int = 0, rank: int = 0,
                 world: int = 1):
        self.size, self.batch_size, self.steps, self.seed, self.start = size, batch_size, steps, seed, start
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return (self.steps - self.start) * self.batch_size // self.world

    def __iter__(self):
        share = self.batch_size // self.world
        for position, index in enumerate(self._global_order()):
            if (position % self.batch_size) // share == self.rank:
                yield index

    def _global_order(self):
        skip, left, epoch = self.start * self.batch_size, (self.steps - self.start) * self.batch_size, 0
        while left > 0:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            epoch += 1
            if skip >= self.size:
                skip -= self.size
                continue
            chunk = order[skip:skip + left].tolist()
            skip = 0
            left -= len(chunk)
            yield from chunk


class StreamStrategy(ObjectDetectionTemplate):
    """Avalanche's loop over one step plan at a time (see the module docstring)."""

    def __init__(self, *, host, train_tasks: list, eval_tasks: list, device, plugins, evaluator,
                 eval_mb_size: int = 16):
        # Avalanche wants an optimizer now; the stacking plugin sets the real one
        # once the step's module exists.
        placeholder = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
        super().__init__(model=HostModel(host), optimizer=placeholder, train_mb_size=1, train_epochs=1,
                         eval_mb_size=eval_mb_size, device=device, plugins=plugins, evaluator=evaluator)
        self.train_tasks, self.eval_tasks = train_tasks, eval_tasks
        self.plan: StepPlan | None = None
        self.step = 0  # optimizer steps taken in the current plan
        # Avalanche's criterion() asserts a training loss dict even in evaluation,
        # which fails an evaluation that comes before any training (the zero-shot row).
        self.detection_loss_dict = {}

    def train_step(self, plan: StepPlan, experience) -> None:
        """Train the plan's module on its experience (from the plan's checkpoint, if any)."""
        self.plan = plan
        self.train(experience, eval_streams=[])

    @property
    def current_task(self):
        tasks = self.train_tasks if self.is_training else self.eval_tasks
        return tasks[self.experience.current_experience]

    def make_optimizer(self, **kwargs):
        pass  # the stacking plugin owns the optimizer

    def make_train_dataloader(self, num_workers: int = 0, **kwargs):
        cfg, start = self.plan.train, self.plan.resume["step"] if self.plan.resume else 0
        world = distributed.world_size()
        sampler = StepSampler(len(self.adapted_dataset), cfg.batch_size, cfg.steps, cfg.seed, start,
                              distributed.rank(), world)
        self.step = start
        self.dataloader = DataLoader(self.adapted_dataset, batch_size=cfg.batch_size // world, sampler=sampler,
                                     collate_fn=detection_collate_fn, num_workers=num_workers)

    def make_eval_dataloader(self, num_workers: int = 0, **kwargs):
        self.dataloader = DataLoader(self.adapted_dataset, batch_size=self.eval_mb_size,
                                     sampler=distributed.shard(len(self.adapted_dataset)),
                                     collate_fn=detection_collate_fn, num_workers=num_workers)

    def forward(self):
        task = self.current_task
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            if self.is_training:
                self.detection_loss_dict = self.model(self.mb_x, self.mb_y, task=task)
                return self.detection_loss_dict
            return [{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in out.items()}
                    for out in self.model(self.mb_x, self.mb_y, task=task)]

    def _unpack_minibatch(self):
        """Avalanche's, but text in the targets (VQA questions) stays where it is."""
        images, targets, labels = self.mbatch
        self.mbatch = ([image.to(self.device, non_blocking=True) for image in images],
                       [{k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
                        for t in targets],
                       torch.as_tensor(labels).to(self.device, non_blocking=True))

    def backward(self):
        super().backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.loss = distributed.average_gradients(params, self.loss)

    def optimizer_step(self, **kwargs):
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.plan.train)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.plan.train.clip)
        super().optimizer_step(**kwargs)
        self.step += 1


def train_once(host, plan: StepPlan, plugins: list, optimizer=None) -> StreamStrategy:
    """Train one plan on its task's training split with the engine's strategy, outside a stream.

    ``plugins`` decide what trains (a StackingPlugin builds the plan's module and
    its optimizer); otherwise ``optimizer`` must be given.
    """
    device = next(host.parameters()).device
    with warnings.catch_warnings():  # no metrics or loggers wanted here; Avalanche warns about that
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(loggers=[])
    strategy = StreamStrategy(host=host, train_tasks=[plan.task], eval_tasks=[], device=device, plugins=plugins,
                              evaluator=evaluator)
    if optimizer is not None:
        strategy.optimizer = optimizer
    benchmark = benchmark_from_datasets(train=[task_dataset(plan.task.train, PixelCache(host.to_pixels), 0)])
    strategy.train_step(plan, benchmark.train_stream[0])
    return strategy


def fit(host, optimizer: torch.optim.Optimizer, task, cfg: TrainConfig, progress: bool = True, every: int = 0,
        callback=None, resume: dict | None = None) -> list[float]:
    """Train what ``optimizer`` holds of ``host`` itself on one task (pretraining).

    ``callback(step, losses)`` runs every ``every`` steps and after the last, with the loss of every step so
    far. ``resume``: {step, rng, losses} of a state saved at such a call (the optimizer already restored);
    training goes on from there on the same batches. Returns the loss per step.
    """
    from continual.plugins import PeriodicCallback, RecordPlugin, ResumeRngPlugin

    record = RecordPlugin(progress)
    plugins = [ResumeRngPlugin(), record]
    if callback:
        plugins.append(PeriodicCallback(every, lambda step: callback(step, record.losses)))
    if resume is None:
        torch.manual_seed(cfg.seed)
    train_once(host, StepPlan(0, task, "pretrain", train=cfg, resume=resume), plugins, optimizer)
    host.eval()
    return record.losses
