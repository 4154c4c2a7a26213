"""A task: a kind, named train/val data, the class phrases the VLP is prompted with, and its evaluator.

Kinds (tasks.kinds, a registry user code extends) and their data:
- ``detection``: a COCO-layout folder (COCO, Roboflow/ODinW) or ``synthetic:WORLD`` scenes;
- ``classification``: an ImageFolder tree or arrow shards (tasks.classification),
  or ``synthetic:WORLD`` object crops; ``shots: K`` keeps K training images per class;
- ``vqa``: the VQAv2 layout or ViLT's arrow shards (tasks.vqa), or questions about
  ``synthetic:WORLD`` scenes; the task's "phrases" are its answer vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tasks.coco import SkippedAnnotations
from tasks.errors import DataError
from tasks.kinds import TASK_KINDS, LoadOptions, task_kind
from tasks.worlds import WORLDS, WorldSizes, world_folder

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
        return task_kind(self.kind).metric

    def evaluator(self):
        """A fresh ``reset / process / evaluate`` evaluator over the validation split."""
        return task_kind(self.kind).evaluator(self)


def default_name(spec: str) -> str:
    """A task's name when none is given: the world's (``synthetic:aquarium``) or the folder's last part."""
    return spec.split(":", 1)[-1].rstrip("/").split("/")[-1]


def list_tasks() -> list[str]:
    """Built-in task specs; any COCO-layout or classification folder works too."""
    return [f"synthetic:{name}" for name in WORLDS]


def resolve_root(spec: str, seed: int = 0, sizes: WorldSizes | None = None, cache_root: Path | None = None,
                 kind: str = "detection") -> Path:
    if spec.startswith("synthetic:"):
        layout = task_kind(kind).world_layout
        if layout is None:
            raise DataError(f"task {spec!r}: {kind} tasks have no synthetic worlds; give a dataset folder")
        return world_folder(spec.split(":", 1)[1], seed=seed, sizes=sizes or WorldSizes(), cache_root=cache_root,
                            layout=layout)
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
    kind_of = task_kind(kind)
    if shots is not None and not kind_of.takes_shots:
        raise DataError(f"task {spec!r}: shots is for classification tasks, not {kind}")
    root = resolve_root(spec, seed, sizes, cache_root, kind)
    loaded = kind_of.load(root, LoadOptions(seed=seed, shots=shots, strict=strict,
                                            keep_supercategories=keep_supercategories, train_split=train_split,
                                            val_split=val_split))
    train, val, names = loaded.train, loaded.val, loaded.class_names
    record: dict[str, Any] = {"kind": kind, **loaded.record}
    record.update(train_size=len(train) if train is not None else 0, val_size=len(val))
    overrides = phrase_overrides or {}
    unknown = set(overrides) - set(names)
    if unknown:
        raise DataError(f"task {spec!r}: phrase override(s) for unknown categories {sorted(unknown)}; "
                        f"categories are {names}")
    phrases = [overrides.get(n, n) for n in names]
    task_name = name or default_name(spec)
    return Task(task_name, kind, root, train, val, phrases, template if kind_of.uses_template else "{}", record)
