"""A task: a kind, named train/val data, the class phrases the VLP is prompted with, and its evaluator.

Kinds and their data:
- ``detection``: a COCO-layout folder (COCO, Roboflow/ODinW) or ``synthetic:WORLD`` scenes;
- ``classification``: an ImageFolder tree or arrow shards (tasks.classification),
  or ``synthetic:WORLD`` object crops; ``shots: K`` keeps K training images per class;
- ``vqa``: the VQAv2 layout or ViLT's arrow shards (tasks.vqa), or questions about
  ``synthetic:WORLD`` scenes; the task's "phrases" are its answer vocabulary.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from evaluation.evaluators import ClassificationEvaluator, CocoEvaluator, VqaEvaluator
from tasks.classification import load_classification
from tasks.coco import CocoDetection, SkippedAnnotations, empty_supercategories, find_split, has_split
from tasks.errors import DataError
from tasks.vqa import load_vqa
from tasks.worlds import WORLDS, WorldSizes, world_folder

TASK_KINDS = ("detection", "classification", "vqa")
PRIMARY_METRIC = {"detection": "mAP", "classification": "accuracy", "vqa": "vqa_accuracy"}
WORLD_LAYOUTS = {"detection": "coco", "classification": "crops", "vqa": "vqa"}
DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass
class Task:
    name: str
    kind: str
    root: Path
    train: Any  # CocoDetection, ImageClassification or VqaData; None for a task only evaluated
    val: Any
    phrases: list[str]  # one per class, in the order of the data's class indices (vqa: the answers)
    template: str = "{}"  # how a class phrase becomes a sentence (hosts that prompt with sentences)
    record: dict[str, Any] = field(default_factory=dict)  # what results.json keeps of the data (shots drawn, sizes)
    # Pretraining only: (targets) -> (phrases, targets) per training batch, names drawn anew (PromptSampler)
    training_prompts: Callable[[list[dict]], tuple[list[str], list[dict]]] | None = None

    def data_notes(self) -> list[str]:
        """What loading left out of the data (skipped annotations, categories kept out of the prompt)."""
        notes = [f"task {self.name!r}: {SkippedAnnotations(**s).summary()}"
                 for s in self.record.get("skipped_annotations", {}).values()]
        if self.record.get("left_out_categories"):
            notes.append(f"task {self.name!r}: categories {self.record['left_out_categories']} have no box in any "
                         "split and are another category's supercategory; left out of the prompt "
                         "(data.keep_supercategories: true keeps them)")
        return notes

    @property
    def metric(self) -> str:
        """The statistic the results matrix holds for this task."""
        return PRIMARY_METRIC[self.kind]

    def evaluator(self):
        """A fresh ``reset / process / evaluate`` evaluator over the validation split."""
        if self.kind == "detection":
            return CocoEvaluator(self.val.coco, self.val.categories)
        if self.kind == "vqa":
            return VqaEvaluator()
        return ClassificationEvaluator(len(self.phrases))


def default_name(spec: str) -> str:
    """A task's name when none is given: the world's (``synthetic:aquarium``) or the folder's last part."""
    return spec.split(":", 1)[-1].rstrip("/").split("/")[-1]


def list_tasks() -> list[str]:
    """Built-in task specs; any COCO-layout or classification folder works too."""
    return [f"synthetic:{name}" for name in WORLDS]


def resolve_root(spec: str, seed: int = 0, sizes: WorldSizes | None = None, cache_root: Path | None = None,
                 kind: str = "detection") -> Path:
    if spec.startswith("synthetic:"):
        return world_folder(spec.split(":", 1)[1], seed=seed, sizes=sizes or WorldSizes(), cache_root=cache_root,
                            layout=WORLD_LAYOUTS[kind])
    folder = Path(spec.split(":", 1)[1] if spec.startswith(("coco:", "folder:")) else spec)
    if not folder.is_dir():
        raise DataError(f"task {spec!r}: not a known task ({', '.join(list_tasks())}) nor a dataset folder")
    return folder


def load_task(spec: str, name: str | None = None, phrase_overrides: dict[str, str] | None = None,
              seed: int = 0, sizes: WorldSizes | None = None, cache_root: Path | None = None,
              kind: str = "detection", shots: int | None = None, template: str = DEFAULT_TEMPLATE,
              strict: bool = False, keep_supercategories: bool = False, train_split: bool | None = True,
              val_split: str = "val") -> Task:
    """Load ``synthetic:WORLD``, ``coco:FOLDER`` or a folder path as a task of ``kind``.

    Class phrases are the category (or class folder) names unless
    ``phrase_overrides`` maps a name to another phrase (e.g. {"aeroplane": "airplane"}).
    ``shots``: K training images per class, drawn with ``seed`` (classification).
    Detection: isolated bad annotations are skipped and recorded (refused if ``strict``); boxless
    supercategories (Roboflow's id 0) are left out of the classes unless ``keep_supercategories``;
    ``train_split=False`` loads the evaluated split alone (a task only evaluated, e.g. COCO val held out),
    ``None`` the train split too where there is one (``continual eval`` checks and reports the whole folder);
    ``val_split`` names the split evaluated (e.g. ``mini_val``, as GLIP evaluates two ODinW sets).
    """
    if kind not in TASK_KINDS:
        raise DataError(f"task {spec!r}: unknown kind {kind!r}; choose from {', '.join(TASK_KINDS)}")
    if shots is not None and kind != "classification":
        raise DataError(f"task {spec!r}: shots is for classification tasks, not {kind}")
    root = resolve_root(spec, seed, sizes, cache_root, kind)
    record: dict[str, Any] = {"kind": kind}
    if kind == "detection":
        val = CocoDetection(*find_split(root, val_split), strict=strict)
        if train_split is None:
            train_split = has_split(root, "train")
        train = CocoDetection(*find_split(root, "train"), strict=strict) if train_split else None
        splits = {"train": train, "val": val} if train else {"val": val}
        if train and train.category_names != val.category_names:
            raise DataError(f"{root}: train and val have different categories ({train.category_names} vs "
                            f"{val.category_names})")
        skipped = {split: asdict(d.skipped) for split, d in splits.items() if d.skipped.total}
        left_out = [] if keep_supercategories else empty_supercategories(*splits.values())
        for data in splits.values():
            data.leave_out_categories({c["id"] for c in left_out})
        if skipped:  # results.json names what was left out (nothing when nothing was)
            record["skipped_annotations"] = skipped
        if left_out:
            record["left_out_categories"] = [c["name"] for c in left_out]
        names = val.category_names
    elif kind == "vqa":
        train, val = load_vqa(root)
        names = train.answers
    else:
        train, val = load_classification(root)
        names = val.class_names
        if shots is not None:
            train, chosen = train.few_shot(shots, seed)
            record.update(shots=shots, shot_seed=seed, shot_indices=chosen)
    record.update(train_size=len(train) if train is not None else 0, val_size=len(val))
    overrides = phrase_overrides or {}
    unknown = set(overrides) - set(names)
    if unknown:
        raise DataError(f"task {spec!r}: phrase override(s) for unknown categories {sorted(unknown)}; "
                        f"categories are {names}")
    phrases = [overrides.get(n, n) for n in names]
    task_name = name or default_name(spec)
    return Task(task_name, kind, root, train, val, phrases, template if kind == "classification" else "{}", record)
