"""Avalanche glue: the host behind torchvision's detection interface, tasks as
Avalanche detection datasets, and the training strategy of the engine.

The strategy is Avalanche 0.6's ObjectDetectionTemplate: its training and
evaluation loops, plugin callbacks, EvaluationPlugin and loggers stay. Three
parts are replaced, each for a reason:
- ``make_optimizer``: the stacking plugin builds AdamW over the new module
  alone; Avalanche's would register every parameter of the model.
- ``make_train_dataloader``: one Avalanche epoch covers the task's whole step
  budget, in a seeded order that can restart at any step (``StepSampler``),
  so a killed run resumes mid-task on the same batches.
- ``optimizer_step``: warm-up + cosine learning rate and gradient clipping,
  the schedule of ``continual.training``.
- ``forward``: bf16 autocast on CUDA (fp16 with a scaler is Avalanche's).
"""
from __future__ import annotations

import warnings

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils.detection_dataset import make_detection_dataset
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised.naive_object_detection import ObjectDetectionTemplate, detection_collate_fn
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from continual.training import TrainConfig, lr_at
from tasks.coco import CocoDetection


class HostDetector(nn.Module):
    """The host as a torchvision-style detector, prompted with the current task's phrases.

    Training: ``model(images, targets) -> {"loss": total}``. Evaluation:
    ``model(images) -> [{boxes, scores, labels}]`` per image, boxes as xyxy
    fractions of the image (the metric scales them by each target's size).
    """

    def __init__(self, host, top_k: int = 100):
        super().__init__()
        self.host = host
        self.top_k = top_k
        self.phrases: list[str] = []  # set by the stacking plugin for each experience

    def forward(self, images, targets=None):
        pixels = self.host.normalize(torch.stack(list(images)))
        if self.training:
            loss, _ = self.host.loss(pixels, self.phrases, targets)
            return {"loss": loss}
        return self.host.predict(pixels, self.phrases, top_k=self.top_k)


class HostInputs(Dataset):
    """A COCO split as (pixels, target) pairs of tensors, as Avalanche moves them to the device.

    Targets are built once (Avalanche keeps them as the dataset's targets too);
    images are read at every visit.
    """

    def __init__(self, data: CocoDetection, to_pixels):
        self.data = data
        self.to_pixels = to_pixels
        self.targets = [self._target(i) for i in range(len(data))]

    def __len__(self) -> int:
        return len(self.data)

    def _target(self, index: int) -> dict:
        t = self.data.target(index)
        return {"image_id": torch.tensor(t["image_id"]), "class_labels": t["class_labels"], "boxes": t["boxes"],
                "size": torch.tensor(t["size"])}

    def __getitem__(self, index: int):
        return self.to_pixels([self.data.open_image(index)])[0], self.targets[index]


def detection_dataset(data: CocoDetection, to_pixels, task_label: int):
    inputs = HostInputs(data, to_pixels)
    return make_detection_dataset(inputs, task_labels=task_label, targets=inputs.targets,
                                  collate_fn=detection_collate_fn)


def build_benchmark(train: list[CocoDetection], test: list[CocoDetection], to_pixels):
    """One training experience per stream step, one test experience per evaluated task."""
    return benchmark_from_datasets(train=[detection_dataset(d, to_pixels, i) for i, d in enumerate(train)],
                                   test=[detection_dataset(d, to_pixels, i) for i, d in enumerate(test)])


class StepSampler(Sampler[int]):
    """Indices for ``steps`` batches: seeded permutations of the data back to back, from batch ``start`` on."""

    def __init__(self, size: int, batch_size: int, steps: int, seed: int, start: int = 0):
        self.size, self.batch_size, self.steps, self.seed, self.start = size, batch_size, steps, seed, start

    def __len__(self) -> int:
        return (self.steps - self.start) * self.batch_size

    def __iter__(self):
        skip, left, epoch = self.start * self.batch_size, len(self), 0
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
    """ObjectDetectionTemplate with a step budget per experience (see the module docstring)."""

    def __init__(self, *, model: HostDetector, device, plugins, evaluator, eval_mb_size: int = 16):
        # Avalanche wants an optimizer now; the stacking plugin sets the real one
        # once the experience's module exists.
        placeholder = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
        super().__init__(model=model, optimizer=placeholder, train_mb_size=1, train_epochs=1,
                         eval_mb_size=eval_mb_size, device=device, plugins=plugins, evaluator=evaluator)
        self.train_config: TrainConfig | None = None  # set by the engine before each train() call
        self.start_step = 0  # > 0 when resuming inside an experience
        self.step = 0
        # Avalanche's criterion() asserts a training loss dict even in evaluation,
        # which fails an evaluation that comes before any training (the zero-shot row).
        self.detection_loss_dict = {}

    def make_optimizer(self, **kwargs):
        pass  # the stacking plugin owns the optimizer

    def make_train_dataloader(self, num_workers: int = 0, **kwargs):
        cfg = self.train_config
        sampler = StepSampler(len(self.adapted_dataset), cfg.batch_size, cfg.steps, cfg.seed, self.start_step)
        self.step = self.start_step
        self.dataloader = DataLoader(self.adapted_dataset, batch_size=cfg.batch_size, sampler=sampler,
                                     collate_fn=detection_collate_fn, num_workers=num_workers)

    def forward(self):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            if self.is_training:
                self.detection_loss_dict = self.model(self.mb_x, self.mb_y)
                return self.detection_loss_dict
            return [{k: (v.float() if v.is_floating_point() else v).cpu() for k, v in out.items()}
                    for out in self.model(self.mb_x)]

    def optimizer_step(self, **kwargs):
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.train_config)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.train_config.clip)
        super().optimizer_step(**kwargs)
        self.step += 1


class _Every(SupervisedPlugin):
    """Calls ``callback(step, loss)`` after every ``every``-th step and after the last."""

    def __init__(self, every: int, callback):
        super().__init__()
        self.every, self.callback = every, callback

    def after_training_iteration(self, strategy, **kwargs):
        step = strategy.step
        if (self.every and step % self.every == 0) or step == strategy.train_config.steps:
            self.callback(step, strategy.loss.item())
            strategy.model.train()


def fit(host, params: list[nn.Parameter], data: CocoDetection, phrases: list[str], cfg: TrainConfig,
        progress: bool = True, every: int = 0, callback=None) -> list[float]:
    """Train ``params`` of ``host`` on one dataset with the engine's strategy; returns the loss per step.

    For training outside a stream (pretraining the host itself).
    """
    from continual.plugins import RecordPlugin

    record = RecordPlugin(progress)
    plugins = [record] + ([_Every(every, callback)] if callback else [])
    device = next(host.parameters()).device
    with warnings.catch_warnings():  # no metrics or loggers wanted here; Avalanche warns about that
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator = EvaluationPlugin(loggers=[])
    strategy = StreamStrategy(model=HostDetector(host), device=device, plugins=plugins, evaluator=evaluator)
    torch.manual_seed(cfg.seed)
    strategy.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    strategy.model.phrases = list(phrases)
    strategy.train_config = cfg
    strategy.train(benchmark_from_datasets(train=[detection_dataset(data, host.to_pixels, 0)]).train_stream[0],
                   eval_streams=[])
    host.eval()
    return record.losses
