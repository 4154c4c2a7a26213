"""Where Avalanche users meet this project: our module stacking in their strategies, their benchmarks as our tasks.

- ``StackingPlugin``: add it to any Avalanche ``SupervisedTemplate`` strategy (``Naive``, ...) whose model is
  a ``StackedClassifier``. Before each training experience it builds the experience's PEFT module, stacks it
  on the frozen host and everything earlier, freezes the rest and has the strategy remake its optimizer;
  after it, it checks that nothing frozen moved and saves the module in the PEFT layout. Avalanche's loop,
  EvaluationPlugin, metrics and loggers stay the user's.
- ``task_from_experiences``: an Avalanche classification experience (with its test experience) as one of our
  tasks, for a stream of the engine's API (``continual.train`` / ``continual.evaluate``).

Avalanche needs its own dependencies (``pip install continual-vlp[avalanche]``); nothing else imports it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin
from torch import nn
from torchvision.transforms.functional import to_pil_image

from continual.hosts.base import Batch
from continual.loop import assert_frozen
from prompts import Stack, build_module, save_module
from tasks.task import DEFAULT_TEMPLATE, Task


class StackedClassifier(nn.Module):
    """A classification host (a dual encoder) with its module stack, as an Avalanche model:
    ``model(images) -> logits`` over ``class_names``, images as float tensors (B, 3, H, W) in [0, 1] at the
    host's input size. The stack's modules are children of this model, so Avalanche's optimizer finds them."""

    def __init__(self, host, class_names: list[str], template: str = DEFAULT_TEMPLATE):
        super().__init__()
        host.check_task_kind("classification")
        self.host, self.class_names, self.template = host, list(class_names), template
        self.stack = Stack(host)
        self.peft = nn.ModuleList()  # the stack's modules, registered for the optimizer and .to()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images - self.host.pixel_mean) / self.host.pixel_std
        return self.host.logits(Batch("classification", pixels, self.class_names, self.template))


@dataclass
class ExperienceTask:
    """What a module's ``prepare`` reads of the task it trains on."""

    name: str
    phrases: list[str]
    kind: str = "classification"
    template: str = DEFAULT_TEMPLATE


class StackingPlugin(SupervisedPlugin):
    """One new PEFT module per training experience, stacked on what earlier experiences left.

        model = StackedClassifier(build_host("builtin:tiny-clip"), class_names)
        strategy = Naive(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                         criterion=nn.CrossEntropyLoss(), plugins=[StackingPlugin("adapter", save_to="modules")])

    ``method`` / ``config``: the module every experience gets; ``save_to``: a folder that receives one
    module folder per experience (``NN-METHOD``, the PEFT layout); ``policy``: how modules are switched at
    evaluation (``all``: every module on; ``own``: the evaluated experience's and those below it).
    ``seed``: the module of experience i is initialised from seed + i.
    """

    def __init__(self, method: str, config: dict | None = None, *, save_to: str | Path | None = None,
                 policy: str = "all", seed: int = 0):
        super().__init__()
        self.method, self.config, self.policy, self.seed = method, dict(config or {}), policy, seed
        self.save_to = Path(save_to) if save_to is not None else None
        self.saved: list[Path] = []  # the module folders written, in order
        self._frozen: dict | None = None
        build_module(method, self.config)  # a bad method or config fails now, not at the first experience

    def before_training_exp(self, strategy, **kwargs):
        model: StackedClassifier = strategy.model
        index = strategy.experience.current_experience
        task = _experience_task(model, strategy.experience)
        torch.manual_seed(self.seed + index)  # the module's initialisation
        module = build_module(self.method, self.config, task=task)
        model.stack.push(module)
        self._frozen = model.stack.frozen_hashes(except_module=module) if module.stackable else None
        module.prepare(task)
        model.stack.train_only(module)
        model.peft.append(module.to(strategy.device))
        strategy.make_optimizer(reset_optimizer_state=True)  # now over the new module's parameters too

    def after_training_exp(self, strategy, **kwargs):
        model: StackedClassifier = strategy.model
        module = model.stack.modules[-1]
        module.requires_grad_(False)
        assert_frozen(model.stack, module, self._frozen)
        if self.save_to is not None:
            folder = self.save_to / f"{len(self.saved):02d}-{module.method}"
            self.saved.append(save_module(module, folder, model.host, position=len(self.saved)))

    def before_eval_exp(self, strategy, **kwargs):
        model: StackedClassifier = strategy.model
        task = _experience_task(model, strategy.experience)
        model.stack.use(self.policy, task.name, task.phrases)

    def after_eval(self, strategy, **kwargs):
        strategy.model.stack.use("all")


def _experience_task(model: StackedClassifier, experience) -> ExperienceTask:
    """An experience's classes as the phrases its module serves (for `prepare` and the policies)."""
    classes = sorted(int(c) for c in experience.classes_in_this_experience)
    return ExperienceTask(f"experience-{experience.current_experience}", [model.class_names[c] for c in classes],
                          template=model.template)


@dataclass
class ExperienceSplit:
    """An Avalanche classification dataset as our tasks' data: images opened as PIL, labels renumbered to
    the task's own classes."""

    dataset: object
    labels: dict[int, int] = field(default_factory=dict)  # Avalanche's class id -> the task's class index

    def __len__(self) -> int:
        return len(self.dataset)

    def open_image(self, index: int):
        image = self.dataset[index][0]
        return to_pil_image(image) if torch.is_tensor(image) else image

    def target(self, index: int) -> dict:
        return {"label": self.labels[int(self.dataset.targets[index])]}  # (Avalanche's targets: no image read)


def task_from_experiences(train, test, class_names: list[str], name: str | None = None,
                          template: str = DEFAULT_TEMPLATE) -> Task:
    """An Avalanche classification experience (``train``) and its test experience (``test``) as one of our
    classification tasks: its classes are the experience's, named by ``class_names[class id]``."""
    classes = sorted(int(c) for c in train.classes_in_this_experience)
    labels = {c: i for i, c in enumerate(classes)}
    task_name = name or f"experience-{train.current_experience}"
    return Task(task_name, "classification", Path("."), ExperienceSplit(train.dataset, labels),
                ExperienceSplit(test.dataset, labels), [class_names[c] for c in classes], template,
                {"kind": "classification", "avalanche_classes": classes, "train_size": len(train.dataset),
                 "val_size": len(test.dataset)})

