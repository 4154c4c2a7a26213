"""A detection task: named train/val data in COCO format and its category phrases."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.coco import CocoDetection, find_split
from tasks.errors import DataError
from tasks.worlds import WORLDS, WorldSizes, world_folder


@dataclass
class DetectionTask:
    name: str
    root: Path
    train: CocoDetection
    val: CocoDetection
    phrases: list[str]  # one per category, in the order of ``val.categories``
    kind: str = "detection"
    metric: str = "mAP"


def list_tasks() -> list[str]:
    """Built-in task specs; any COCO-layout folder works too (``coco:PATH``)."""
    return [f"synthetic:{name}" for name in WORLDS]


def resolve_root(spec: str, seed: int = 0, sizes: WorldSizes | None = None, cache_root: Path | None = None) -> Path:
    if spec.startswith("synthetic:"):
        return world_folder(spec.split(":", 1)[1], seed=seed, sizes=sizes or WorldSizes(), cache_root=cache_root)
    folder = Path(spec.split(":", 1)[1] if spec.startswith("coco:") else spec)
    if not folder.is_dir():
        raise DataError(f"task {spec!r}: not a known task ({', '.join(list_tasks())}) nor a COCO-layout folder")
    return folder


def load_task(spec: str, name: str | None = None, phrase_overrides: dict[str, str] | None = None,
              seed: int = 0, sizes: WorldSizes | None = None, cache_root: Path | None = None) -> DetectionTask:
    """Load ``synthetic:WORLD``, ``coco:FOLDER`` or a folder path as a task.

    Category phrases are the category names unless ``phrase_overrides`` maps
    a name to another phrase (e.g. {"aeroplane": "airplane"}).
    """
    root = resolve_root(spec, seed, sizes, cache_root)
    train, val = (CocoDetection(*find_split(root, split)) for split in ("train", "val"))
    if train.category_names != val.category_names:
        raise DataError(f"{root}: train and val have different categories "
                        f"({train.category_names} vs {val.category_names})")
    overrides = phrase_overrides or {}
    unknown = set(overrides) - set(val.category_names)
    if unknown:
        raise DataError(f"task {spec!r}: phrase override(s) for unknown categories {sorted(unknown)}; "
                        f"categories are {val.category_names}")
    phrases = [overrides.get(n, n) for n in val.category_names]
    return DetectionTask(name or spec.split(":", 1)[-1].rstrip("/").split("/")[-1], root, train, val, phrases)
