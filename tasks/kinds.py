"""Task kinds: what a kind of task loads and how it is scored, one class each in a registry that user code
extends with ``@register_task_kind`` (examples/custom_task_kind.py).

A kind's data splits are datasets with ``len()``, ``open_image(i)`` (a PIL image) and ``target(i)`` (a
dict of numbers, arrays or text: what the host's ``loss`` and the evaluator read); its evaluator has
``reset()``, ``process(targets, predictions)`` and ``evaluate() -> {statistic: value}``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from continual.registry import Registry
from evaluation.evaluators import ClassificationEvaluator, CocoEvaluator, VqaEvaluator
from tasks.classification import load_classification
from tasks.coco import CocoDetection, empty_supercategories, find_split, has_split
from tasks.errors import DataError
from tasks.vqa import load_vqa


@dataclass(frozen=True)
class LoadOptions:
    """How a task's data are read, beyond its folder (the TaskConfig and DataConfig keys that concern data)."""

    seed: int = 0  # few-shot draws
    shots: int | None = None  # K training items per class (kinds that take shots)
    strict: bool = False  # refuse any bad annotation instead of skipping it
    keep_supercategories: bool = False
    train_split: bool | None = True  # False: the evaluated split alone; None: the train split where there is one
    val_split: str = "val"  # the split evaluated


@dataclass
class LoadedData:
    train: Any  # None for a task only evaluated
    val: Any
    class_names: list[str]  # one per class, in the data's class order (the phrases unless overridden)
    record: dict[str, Any] = field(default_factory=dict)  # what results.json keeps of the data


class TaskKind:
    """One kind of task: subclasses set the class attributes and implement ``load`` and ``evaluator``."""

    name: ClassVar[str]  # registry name, e.g. "detection"
    metric: ClassVar[str]  # the evaluator's statistic that the results matrix holds
    logged: ClassVar[tuple[str, ...]] = ()  # statistics written to TensorBoard and run.log (besides metric)
    world_layout: ClassVar[str | None] = None  # how synthetic:WORLD is written for it ("coco", "crops", "vqa")
    uses_template: ClassVar[bool] = False  # phrases become sentences through the task's template
    takes_shots: ClassVar[bool] = False
    takes_val_split: ClassVar[bool] = False

    def load(self, root: Path, options: LoadOptions) -> LoadedData:
        raise NotImplementedError

    def evaluator(self, task):
        """A fresh evaluator over ``task``'s validation split."""
        raise NotImplementedError


class TaskKindError(DataError):
    """An unknown task kind, or one registered twice."""


TASK_KINDS = Registry("task kind", "name", TaskKindError)
register_task_kind = TASK_KINDS.register


def task_kind(name: str) -> TaskKind:
    return TASK_KINDS.lookup(name)()


@register_task_kind
class Detection(TaskKind):
    """COCO-format boxes (COCO, Roboflow and ODinW exports); COCO bbox mAP@[.5:.95]."""

    name, metric, logged, world_layout, takes_val_split = "detection", "mAP", ("AP50", "AP75", "AR100"), "coco", True

    def load(self, root: Path, options: LoadOptions) -> LoadedData:
        val = CocoDetection(*find_split(root, options.val_split), strict=options.strict)
        train_split = has_split(root, "train") if options.train_split is None else options.train_split
        train = CocoDetection(*find_split(root, "train"), strict=options.strict) if train_split else None
        splits = {"train": train, "val": val} if train else {"val": val}
        if train and train.category_names != val.category_names:
            raise DataError(f"{root}: train and val have different categories ({train.category_names} vs "
                            f"{val.category_names})")
        record: dict[str, Any] = {}
        skipped = {split: asdict(d.skipped) for split, d in splits.items() if d.skipped.total}
        left_out = [] if options.keep_supercategories else empty_supercategories(*splits.values())
        for data in splits.values():
            data.leave_out_categories({c["id"] for c in left_out})
        if skipped:  # results.json names what was left out (nothing when nothing was)
            record["skipped_annotations"] = skipped
        if left_out:
            record["left_out_categories"] = [c["name"] for c in left_out]
        return LoadedData(train, val, val.category_names, record)

    def evaluator(self, task):
        return CocoEvaluator(task.val.coco, task.val.categories)


@register_task_kind
class Classification(TaskKind):
    """One label per image (ImageFolder trees, Arrow shards); top-1 accuracy, mean per-class beside it."""

    name, metric, logged, world_layout = "classification", "accuracy", ("mean_class_accuracy",), "crops"
    uses_template = takes_shots = True

    def load(self, root: Path, options: LoadOptions) -> LoadedData:
        train, val = load_classification(root)
        record: dict[str, Any] = {}
        if options.shots is not None:
            train, chosen = train.few_shot(options.shots, options.seed)
            record.update(shots=options.shots, shot_seed=options.seed, shot_indices=chosen)
        return LoadedData(train, val, val.class_names, record)

    def evaluator(self, task):
        return ClassificationEvaluator(len(task.phrases))


@register_task_kind
class Vqa(TaskKind):
    """Questions about images (VQAv2 JSON, ViLT's Arrow shards), scored over the task's answers; VQA accuracy."""

    name, metric, world_layout = "vqa", "vqa_accuracy", "vqa"

    def load(self, root: Path, options: LoadOptions) -> LoadedData:
        train, val = load_vqa(root)
        return LoadedData(train, val, train.answers)

    def evaluator(self, task):
        return VqaEvaluator()
