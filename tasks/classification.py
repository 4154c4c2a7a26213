"""Image classification data: ImageFolder trees and pyarrow shards, checked on load, with few-shot subsets.

Layouts of a task folder (``val`` may be called ``valid``):
- ImageFolder: ``train/CLASS/*.png|jpg`` and ``val/CLASS/*``; class names are
  the folder names, sorted, and both splits must have the same classes;
- pyarrow shards: ``train*.arrow`` and ``val*.arrow`` (Arrow IPC files, as
  ViLT's code writes them), each a table with an ``image`` column of encoded
  image bytes and a ``label`` column: an integer index into ``classes.json``
  (a JSON list of class names beside the shards) or the class name itself.

Items are (PIL image, target) with target ``image_id`` (the item's index)
and ``label`` (class index).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from tasks.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation")}


@dataclass(frozen=True)
class Sample:
    """Where one image comes from: a file, or a row of an arrow shard."""

    label: int
    path: Path | None = None
    shard: Path | None = None
    row: int = -1

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"{self.shard} row {self.row}"


class ImageClassification(torch.utils.data.Dataset):
    def __init__(self, samples: list[Sample], class_names: list[str], source: Path):
        self.samples = samples
        self.class_names = list(class_names)
        self.source = Path(source)
        self._tables: dict[Path, object] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def open_image(self, index: int) -> Image.Image:
        sample = self.samples[index]
        if sample.path is not None:
            return decode_image(sample.describe(), path=sample.path)
        return decode_image(sample.describe(), data=self._table(sample.shard).column("image")[sample.row].as_py())

    def _table(self, shard: Path):
        if shard not in self._tables:
            self._tables[shard] = read_shard(shard)
        return self._tables[shard]

    def target(self, index: int) -> dict:
        return {"image_id": index, "label": self.samples[index].label}

    def __getitem__(self, index: int):
        return self.open_image(index), self.target(index)

    def few_shot(self, shots: int, seed: int) -> tuple["ImageClassification", list[int]]:
        """K items per class, drawn with ``seed``; returns the subset and the chosen indices (to record)."""
        by_class: dict[int, list[int]] = {c: [] for c in range(len(self.class_names))}
        for i, s in enumerate(self.samples):
            by_class[s.label].append(i)
        short = {self.class_names[c]: len(ix) for c, ix in by_class.items() if len(ix) < shots}
        if short:
            raise DataError(f"{self.source}: shots={shots} but class(es) have fewer training images: {short}")
        rng = np.random.default_rng(seed)
        chosen = sorted(int(i) for ix in by_class.values() for i in rng.choice(ix, size=shots, replace=False))
        subset = ImageClassification([self.samples[i] for i in chosen], self.class_names, self.source)
        subset._tables = self._tables
        return subset, chosen


def decode_image(where: str, path: Path | None = None, data: bytes | None = None) -> Image.Image:
    """An RGB image from a file or from encoded bytes (a shard's cell); faults name ``where``."""
    try:
        with Image.open(path if path is not None else io.BytesIO(data)) as im:
            return im.convert("RGB")
    except FileNotFoundError as err:
        raise DataError(f"{where}: image file not found") from err
    except (UnidentifiedImageError, OSError, TypeError) as err:
        raise DataError(f"{where}: cannot decode image ({err})") from err


def read_shard(path: Path, columns: tuple[str, ...] = ("image", "label")):
    """An Arrow IPC file as a table, refused unless it has ``columns``."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not an Arrow IPC file ({err})") from err
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: the table lacks column(s) {missing}; it has {table.column_names}")
    return table


def _split_dir(root: Path, split: str) -> Path | None:
    return next((root / n for n in SPLIT_NAMES[split] if (root / n).is_dir()), None)


def _shards(root: Path, split: str) -> list[Path]:
    return sorted(p for n in SPLIT_NAMES[split] for p in root.glob(f"{n}*.arrow"))


def load_image_folder(folder: Path) -> ImageClassification:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder}: no class folders (expected {folder}/CLASS/IMAGE)")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{folder / name}: class {name!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
        samples += [Sample(label, path=f) for f in files]
    return ImageClassification(samples, classes, folder)


def load_arrow(root: Path, shards: list[Path], classes: list[str] | None) -> ImageClassification:
    samples, names = [], list(classes or [])
    for shard in shards:
        labels = read_shard(shard).column("label").to_pylist()
        for row, label in enumerate(labels):
            if isinstance(label, str) and classes is None:
                if label not in names:
                    names.append(label)
                label = names.index(label)
            elif isinstance(label, str):
                if label not in names:
                    raise DataError(f"{shard} row {row}: label {label!r} is not in {root / 'classes.json'}")
                label = names.index(label)
            elif not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(names):
                raise DataError(f"{shard} row {row}: label {label!r} out of range; "
                                + (f"{root / 'classes.json'} names {len(names)} classes" if names else
                                   f"integer labels need {root / 'classes.json'} (a JSON list of class names)"))
            samples.append(Sample(label, shard=shard, row=row))
    if not samples:
        raise DataError(f"{root}: the shards {[s.name for s in shards]} hold no rows")
    return ImageClassification(samples, names, root)


def load_split(root: str | Path, split: str, classes: list[str] | None = None) -> ImageClassification:
    """One split of a classification folder (ImageFolder tree or arrow shards)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    folder, shards = _split_dir(root, split), _shards(root, split)
    if folder is not None:
        return load_image_folder(folder)
    if shards:
        names = classes
        if names is None and (root / "classes.json").is_file():
            try:
                names = json.loads((root / "classes.json").read_text())
            except json.JSONDecodeError as err:
                raise DataError(f"{root / 'classes.json'}: not valid JSON ({err})") from err
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise DataError(f"{root / 'classes.json'}: expected a JSON list of class names")
        return load_arrow(root, shards, names)
    raise DataError(f"{root}: no {split!r} split; looked for {', '.join(f'{n}/CLASS/' for n in SPLIT_NAMES[split])} "
                    f"and {', '.join(f'{n}*.arrow' for n in SPLIT_NAMES[split])}")


def load_classification(root: str | Path) -> tuple[ImageClassification, ImageClassification]:
    """(train, val) of a classification folder; both splits must name the same classes."""
    train = load_split(root, "train")
    val = load_split(root, "val", classes=train.class_names if _shards(Path(root), "val") else None)
    if train.class_names != val.class_names:
        raise DataError(f"{root}: train and val have different classes ({train.class_names} vs {val.class_names})")
    return train, val
