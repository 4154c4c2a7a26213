"""COCO-format detection data, checked on load.

A malformed annotation file raises DataError naming the file and what was
expected; isolated bad annotations in a sound file (an empty box, a box outside
its image, an annotation of an unknown image or category) are left out and
counted, or refused with ``strict``. An image that cannot be read raises
DataError when first opened (or for all images at once with ``verify_images``).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from tasks.errors import DataError

# Boxes may overhang the image by this many pixels (rounding in real annotations).
BOX_TOLERANCE = 1.0
REQUIRED = {"images": ("id", "file_name", "width", "height"), "annotations": ("id", "image_id", "category_id", "bbox"),
            "categories": ("id", "name")}


# Isolated faults of single annotations in otherwise sound files: skipped and counted unless strict
# (torchvision's and detectron2's COCO readers drop such boxes too); anything else is refused.
SKIPPABLE = {"empty_box": "box with width or height <= 0", "box_outside_image": "box outside its image",
             "unknown_image": "annotation of an image not in 'images'",
             "unknown_category": "annotation of an unknown category"}
NAMED = 5  # skipped annotations named one by one; the rest are counted


@dataclass
class SkippedAnnotations:
    """The annotations of one file that were left out, counted per fault, the first few named."""

    file: str
    counts: dict[str, int] = field(default_factory=dict)
    first: list[str] = field(default_factory=list)

    def add(self, fault: str, message: str) -> None:
        self.counts[fault] = self.counts.get(fault, 0) + 1
        if len(self.first) < NAMED:
            self.first.append(message.removeprefix(f"{self.file}: "))  # the summary names the file once

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        faults = ", ".join(f"{n} {SKIPPABLE[f]}" for f, n in sorted(self.counts.items()))
        return (f"{self.file}: skipped {self.total} annotation(s) ({faults}); first: {'; '.join(self.first)} "
                "(data.strict: true refuses them)")


def read_coco_json(path: Path, strict: bool = False) -> tuple[dict, SkippedAnnotations]:
    """Load and validate one COCO instances file; isolated bad annotations are left out of it (or refused if
    ``strict``). Returns the file's contents without them, the annotations numbered from 1 (each one's own id
    kept as ``source_id``), and what was left out."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(coco, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations and categories")
    for section, keys in REQUIRED.items():
        if not isinstance(coco.get(section), list):
            raise DataError(f"{path}: missing list {section!r}")
        for n, entry in enumerate(coco[section]):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise DataError(f"{path}: {section}[{n}] lacks key(s) {', '.join(missing)}")
    if not coco["categories"]:
        raise DataError(f"{path}: no categories")
    for section, keys in REQUIRED.items():
        for n, entry in enumerate(coco[section]):
            for key in ("id", "image_id", "category_id"):
                if key in keys and (isinstance(entry[key], bool) or not isinstance(entry[key], int)):
                    raise DataError(f"{path}: {section}[{n}] has {key} {entry[key]!r} of type "
                                    f"{type(entry[key]).__name__}; ids must be integers")
    for section in REQUIRED:
        counts = Counter(e["id"] for e in coco[section])
        dupes = [i for i, c in counts.items() if c > 1]
        if dupes:
            raise DataError(f"{path}: duplicate {section} id(s) {dupes[:5]}")
    for n, image in enumerate(coco["images"]):
        size = image["width"], image["height"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise DataError(f"{path}: images[{n}] ({image['file_name']!r}) has size {size[0]}x{size[1]}; "
                            "width and height must be positive integers")
    images = {im["id"]: im for im in coco["images"]}
    category_ids = {c["id"] for c in coco["categories"]}
    skipped, kept = SkippedAnnotations(str(path)), []
    for ann in coco["annotations"]:
        fault = _annotation_fault(path, ann, images, category_ids)
        if fault is None:
            kept.append(ann)
        elif strict:
            raise DataError(f"{fault[1]} (refused: data.strict is on; without it such annotations are skipped)")
        else:
            skipped.add(*fault)
    # COCO evaluation (pycocotools and faster-coco-eval alike) records a match by the ground truth's id and
    # reads 0 as "unmatched": Roboflow exports (ODinW) number their first box 0, so every box is numbered anew
    # from 1 here; its own id stays beside it for messages.
    kept = [{**ann, "id": n, "source_id": ann["id"]} for n, ann in enumerate(kept, start=1)]
    return {**coco, "annotations": kept}, skipped


def _annotation_fault(path: Path, ann: dict, images: dict, category_ids: set) -> tuple[str, str] | None:
    """(fault, message) of an isolated bad annotation, None for a good one; a malformed one is refused."""
    where = f"{path}: annotation {ann['id']}"
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            and math.isfinite(v) for v in box)):
        raise DataError(f"{where}: bbox must be [x, y, width, height] finite numbers, got {box!r}")
    if ann["image_id"] not in images:
        return "unknown_image", f"{where} refers to image {ann['image_id']}, which is not in 'images'"
    if ann["category_id"] not in category_ids:
        return "unknown_category", f"{where} has unknown category_id {ann['category_id']}"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return "empty_box", f"{where}: bbox {box} has width or height <= 0"
    image = images[ann["image_id"]]
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > image["width"] + BOX_TOLERANCE \
            or y + h > image["height"] + BOX_TOLERANCE:
        return "box_outside_image", (f"{where}: bbox {box} lies outside image {image['id']} "
                                     f"({image['width']}x{image['height']})")
    return None


class CocoDetection(torch.utils.data.Dataset):
    """A COCO instances file plus its image folder.

    Items are (PIL image, target) with target ``image_id``, ``class_labels``
    (index into ``categories``, which are sorted by id) and ``boxes``
    (cx, cy, w, h as fractions of the image).
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path, strict: bool = False):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.coco, self.skipped = read_coco_json(self.annotation_file, strict)
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: image folder not found (for {self.annotation_file})")
        self.categories = sorted(self.coco["categories"], key=lambda c: c["id"])
        self.category_index = {c["id"]: i for i, c in enumerate(self.categories)}
        self.images = sorted(self.coco["images"], key=lambda im: im["id"])
        self._by_image: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for ann in self.coco["annotations"]:
            if not ann.get("iscrowd", 0):
                self._by_image[ann["image_id"]].append(ann)

    @property
    def category_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    def box_counts(self) -> Counter:
        """Boxes per category id (crowd boxes included)."""
        return Counter(a["category_id"] for a in self.coco["annotations"])

    def leave_out_categories(self, ids: set[int]) -> None:
        """Drop categories that no annotation uses (e.g. a Roboflow supercategory) from the class list."""
        self.coco = {**self.coco, "categories": [c for c in self.coco["categories"] if c["id"] not in ids]}
        self.categories = [c for c in self.categories if c["id"] not in ids]
        self.category_index = {c["id"]: i for i, c in enumerate(self.categories)}

    def __len__(self) -> int:
        return len(self.images)

    def open_image(self, index: int) -> Image.Image:
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except FileNotFoundError as err:
            raise DataError(f"{path}: image file not found (image id {info['id']} in {self.annotation_file})") from err
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{path}: cannot decode image ({err})") from err
        if image.size != (info["width"], info["height"]):
            raise DataError(f"{path}: image is {image.size[0]}x{image.size[1]} but {self.annotation_file} "
                            f"says {info['width']}x{info['height']}")
        return image

    def target(self, index: int) -> dict:
        info = self.images[index]
        anns = self._by_image[info["id"]]
        w, h = info["width"], info["height"]
        boxes = torch.tensor([[(a["bbox"][0] + a["bbox"][2] / 2) / w, (a["bbox"][1] + a["bbox"][3] / 2) / h,
                               a["bbox"][2] / w, a["bbox"][3] / h] for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.category_index[a["category_id"]] for a in anns], dtype=torch.long)
        return {"image_id": info["id"], "class_labels": labels, "boxes": boxes.clamp(0, 1), "size": (w, h)}

    def __getitem__(self, index: int):
        return self.open_image(index), self.target(index)

    def verify_images(self) -> None:
        """Open every image once; raises DataError on the first bad one."""
        for i in range(len(self)):
            self.open_image(i)


def empty_supercategories(*splits: CocoDetection) -> list[dict]:
    """Categories that another category names as its supercategory and that have no box in any split:
    Roboflow exports put the dataset's own name there (id 0), which is not a class to prompt for."""
    boxes = sum((s.box_counts() for s in splits), Counter())
    categories = splits[0].categories

    def is_parent(category: dict) -> bool:  # Roboflow's "Cottontail-Rabbit" is its own child's supercategory
        return any(o.get("supercategory") == category["name"] for o in categories if o["id"] != category["id"])
    return [c for c in categories if is_parent(c) and not boxes[c["id"]]]


def find_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split in the usual COCO layouts.

    Tried in order for each name of the split (val: val, valid, val2017; train: train, train2017):
    ``annotations/instances_{name}.json`` with images in ``{name}/`` or ``images/{name}/`` (COCO, our
    worlds); ``{name}/_annotations.coco.json`` with images beside it (Roboflow/ODinW exports); GLIP's ODinW
    download, ``{name}/annotations_without_background.json`` or ``{name}_annotations_without_background.json``
    with images beside it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    names = [split] + (["valid", "val2017"] if split == "val" else ["train2017"] if split == "train" else [])
    tried = []
    for name in names:
        coco = root / "annotations" / f"instances_{name}.json"
        tried.append(coco)
        for images in (root / name, root / "images" / name):
            if coco.is_file() and images.is_dir():
                return coco, images
        for beside in (root / name / "_annotations.coco.json", root / name / "annotations_without_background.json",
                       root / f"{name}_annotations_without_background.json"):
            tried.append(beside)
            if beside.is_file():
                return beside, beside.parent
    raise DataError(f"{root}: no {split!r} split found; looked for "
                    f"{', '.join(str(p.relative_to(root)) for p in tried)}")


def has_split(root: str | Path, split: str) -> bool:
    """Whether ``find_split`` finds the split in ``root``."""
    try:
        find_split(root, split)
    except DataError:
        return False
    return True
