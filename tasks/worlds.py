"""Synthetic worlds, written to disk: scenes in COCO format (detection), object crops as ImageFolder trees.

A world is a set of categories (a phrase, a painter and a colour) on a
background of its own. ``base`` is the COCO stand-in the tiny host is
pretrained on, and ``base-scenes`` the same shapes on every world's
backgrounds (the second pretraining stage); the others are novel worlds with
new categories and looks (``aquarium`` is the Aquarium stand-in). Generation
is deterministic: the same world, seed and sizes give byte-identical files.

The VQA layout (``layout="vqa"``) is the scenes plus questions generated from
their annotations (tasks.questions) in the VQAv2 layout (tasks.vqa).

The classification layout (``layout="crops"``) draws one object per image on
the world's background, larger than in scenes, classes in turn (balanced):
``train/CLASS/NNNNNN.png`` and ``val/CLASS/NNNNNN.png``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from tasks import shapes
from tasks.errors import DataError
from tasks.questions import scene_questions, world_answers

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class CategorySpec:
    name: str  # also the phrase the VLP is prompted with
    painter: shapes.Painter
    color: RGB
    detail: RGB | None = None


@dataclass(frozen=True)
class World:
    name: str
    description: str
    categories: tuple[CategorySpec, ...]
    background: Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class WorldSizes:
    train: int = 400
    val: int = 100
    image_size: int = 128
    max_objects: int = 4
    min_object: float = 0.18  # object side as a fraction of the image side
    max_object: float = 0.42

    def key(self) -> str:
        return hashlib.sha1(repr(self).encode()).hexdigest()[:8]


# -- backgrounds: (rng, size) -> uint8 HxWx3 ------------------------------------
def _noisy(base: np.ndarray, rng: np.random.Generator, amount: int) -> np.ndarray:
    noise = rng.integers(-amount, amount + 1, size=base.shape)
    return np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _vertical_gradient(top: RGB, bottom: RGB, size: int) -> np.ndarray:
    t = np.linspace(0, 1, size)[:, None, None]
    column = (1 - t) * np.array(top) + t * np.array(bottom)
    return np.broadcast_to(column, (size, size, 3)).copy()


def plain_bg(rng, size):
    shade = rng.integers(200, 235)
    return _noisy(np.full((size, size, 3), shade), rng, 6)


def water_bg(rng, size):
    img = _vertical_gradient((40, 120, 190), (10, 40, 90), size)
    for _ in range(rng.integers(3, 9)):  # bubbles
        y, x = rng.integers(0, size, 2)
        r = rng.integers(1, 4)
        yy, xx = np.ogrid[:size, :size]
        img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = (150, 200, 235)
    return _noisy(img, rng, 8)


def wood_bg(rng, size):
    stripes = 20 * np.sin(np.arange(size) / rng.uniform(3, 6))[None, :, None]
    return _noisy(np.full((size, size, 3), (150, 105, 60)) + stripes, rng, 6)


def road_bg(rng, size):
    img = np.full((size, size, 3), 95.0)
    lane = size // 2
    img[lane - 1:lane + 1, (np.arange(size) // 8) % 2 == 0] = 230
    return _noisy(img, rng, 10)


def outdoor_bg(rng, size):
    img = _vertical_gradient((150, 200, 240), (170, 210, 240), size)
    horizon = rng.integers(size // 2, 3 * size // 4)
    img[horizon:] = (90, 150, 70)
    return _noisy(img, rng, 6)


def space_bg(rng, size):
    img = np.full((size, size, 3), (10, 10, 35), dtype=np.float64)
    ys, xs = rng.integers(0, size, (2, rng.integers(15, 40)))
    img[ys, xs] = 220
    return _noisy(img, rng, 4)


BACKGROUNDS = (plain_bg, water_bg, wood_bg, road_bg, outdoor_bg, space_bg)


def any_bg(rng, size):
    """One of the worlds' backgrounds, drawn per image."""
    return BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))](rng, size)


C = CategorySpec
RED, GREEN, BLUE, YELLOW, PURPLE, ORANGE = (220, 40, 40), (40, 170, 60), (40, 80, 220), (235, 205, 40), (140, 60, 170), (240, 140, 30)

BASE_CATEGORIES = (
    C("red circle", shapes.circle, RED), C("blue circle", shapes.circle, BLUE),
    C("green square", shapes.square, GREEN), C("yellow square", shapes.square, YELLOW),
    C("red triangle", shapes.triangle, RED), C("green triangle", shapes.triangle, GREEN),
    C("blue star", shapes.star, BLUE), C("yellow star", shapes.star, YELLOW),
    C("purple ring", shapes.ring, PURPLE), C("orange ring", shapes.ring, ORANGE),
    C("purple cross", shapes.cross, PURPLE), C("orange cross", shapes.cross, ORANGE),
)

# Every colour and shape of the base world by its word (tasks.vocabulary holds the words' synonyms).
COLOUR_RGB = {"red": RED, "blue": BLUE, "green": GREEN, "yellow": YELLOW, "purple": PURPLE, "orange": ORANGE}
SHAPE_PAINTERS = {"circle": shapes.circle, "square": shapes.square, "triangle": shapes.triangle,
                  "star": shapes.star, "ring": shapes.ring, "cross": shapes.cross}
# Combinations no pretraining world draws: world ``combos``, what bench/grounding.py probes.
HELD_OUT_COMBOS = (("blue", "square"), ("red", "star"), ("green", "circle"), ("yellow", "triangle"),
                   ("purple", "square"), ("orange", "circle"))


def _combo(colour: str, shape: str) -> CategorySpec:
    return C(f"{colour} {shape}", SHAPE_PAINTERS[shape], COLOUR_RGB[colour])


# The grounding recipe's categories: every other colour-shape combination (30, the base world's 12 among them).
GROUNDING_CATEGORIES = tuple(_combo(c, s) for c in COLOUR_RGB for s in SHAPE_PAINTERS
                             if (c, s) not in HELD_OUT_COMBOS)

WORLDS: dict[str, World] = {w.name: w for w in (
    World("base", "coloured geometric shapes on grey: the pretraining (COCO stand-in) world", BASE_CATEGORIES, plain_bg),
    World("base-scenes", "the base shapes on every world's backgrounds: the second pretraining stage",
          BASE_CATEGORIES, any_bg),
    World("aquarium", "sea creatures in blue water: the Aquarium stand-in", (
        C("fish", shapes.fish, (250, 150, 40)), C("jellyfish", shapes.jellyfish, (240, 170, 220)),
        C("starfish", shapes.starfish, (230, 90, 70)), C("shark", shapes.shark, (150, 160, 170)),
        C("crab", shapes.crab, (200, 40, 30)),
    ), water_bg),
    World("fruit", "fruit on a wooden table", (
        C("apple", shapes.apple, (200, 30, 40)), C("banana", shapes.banana, (245, 220, 60)),
        C("orange", shapes.circle, (250, 140, 20)), C("grapes", shapes.grapes, (110, 40, 130)),
        C("pear", shapes.pear, (170, 200, 60)),
    ), wood_bg),
    World("vehicles", "vehicles on a road", (
        C("car", shapes.car, (200, 30, 30)), C("bus", shapes.bus, (240, 190, 30)),
        C("bicycle", shapes.bicycle, (30, 30, 30)), C("boat", shapes.boat, (240, 240, 240)),
        C("airplane", shapes.airplane, (180, 190, 210)),
    ), road_bg),
    World("signs", "traffic signs outdoors", (
        C("stop sign", shapes.octagon, (210, 20, 30)), C("yield sign", shapes.inverted_triangle, (245, 245, 245)),
        C("one way arrow", shapes.arrow, (30, 90, 200)),
        C("no entry sign", shapes.no_entry, (210, 20, 30), (245, 245, 245)),
        C("parking sign", shapes.parking, (30, 90, 200), (245, 245, 245)),
    ), outdoor_bg),
    World("grounding", "every colour-shape combination but the held-out ones, on grey: the grounding recipe's "
          "first pretraining stage", GROUNDING_CATEGORIES, plain_bg),
    World("grounding-scenes", "the grounding world's objects on every world's backgrounds: its second stage",
          GROUNDING_CATEGORIES, any_bg),
    World("combos", "the base colours and shapes in combinations no pretraining world draws, on grey: for probing",
          tuple(_combo(c, s) for c, s in HELD_OUT_COMBOS), plain_bg),
    World("space", "objects in space", (
        C("planet", shapes.planet, (210, 160, 90)), C("moon", shapes.moon, (230, 230, 200)),
        C("rocket", shapes.rocket, (235, 235, 240)), C("comet", shapes.comet, (150, 220, 255)),
        C("satellite", shapes.satellite, (190, 190, 110)),
    ), space_bg),
)}


PRETRAINING_WORLDS = ("base", "base-scenes", "grounding", "grounding-scenes")
PROBE_WORLDS = ("combos",)  # neither pretrained on nor a novel world: what bench/grounding.py probes
NOVEL_WORLDS = tuple(name for name in WORLDS if name not in PRETRAINING_WORLDS + PROBE_WORLDS)


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise DataError(f"unknown synthetic world {name!r}; known worlds: {', '.join(WORLDS)}")
    return WORLDS[name]


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _overlaps(box, boxes, gap=2) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap for b in boxes)


def render_image(world: World, rng: np.random.Generator, sizes: WorldSizes):
    """One image and its objects as (category index, COCO xywh box)."""
    size = sizes.image_size
    image = Image.fromarray(world.background(rng, size))
    draw = ImageDraw.Draw(image)
    placed, objects = [], []
    for _ in range(int(rng.integers(1, sizes.max_objects + 1))):
        for _attempt in range(20):
            side = rng.uniform(sizes.min_object, sizes.max_object) * size
            w, h = side * rng.uniform(0.8, 1.25), side * rng.uniform(0.8, 1.25)
            x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
            box = (x0, y0, x0 + w, y0 + h)
            if not _overlaps(box, placed):
                break
        else:
            continue
        index = int(rng.integers(len(world.categories)))
        spec = world.categories[index]
        jitter = rng.integers(-20, 21, 3)
        color = tuple(int(c) for c in np.clip(np.array(spec.color) + jitter, 0, 255))
        mask = Image.new("L", (size, size), 0)
        spec.painter(ImageDraw.Draw(mask), box, 255, **({"detail": 255} if spec.detail else {}))
        tight = mask.getbbox()
        if tight is None:
            continue
        spec.painter(draw, box, color, **({"detail": spec.detail} if spec.detail else {}))
        placed.append(box)
        objects.append((index, [tight[0], tight[1], tight[2] - tight[0], tight[3] - tight[1]]))
    return image, objects


def _write_split(world: World, split: str, count: int, seed: int, sizes: WorldSizes, root: Path) -> None:
    rng = np.random.default_rng([seed, _stable_int(world.name), _stable_int(split)])
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        image, objects = render_image(world, rng, sizes)
        file_name = f"{image_id:06d}.png"
        image.save(root / split / file_name, optimize=False)
        images.append({"id": image_id, "file_name": file_name, "width": sizes.image_size, "height": sizes.image_size})
        for index, bbox in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": index + 1,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    categories = [{"id": i + 1, "name": c.name, "supercategory": world.name} for i, c in enumerate(world.categories)]
    coco = {"images": images, "annotations": annotations, "categories": categories,
            "info": {"description": f"synthetic world {world.name!r}, seed {seed}"}}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco, sort_keys=True))


def render_crop(world: World, rng: np.random.Generator, index: int, size: int) -> Image.Image:
    """One object of category ``index`` filling most of an image of the world's background."""
    image = Image.fromarray(world.background(rng, size))
    side = rng.uniform(0.45, 0.8) * size
    w, h = min(size - 2, side * rng.uniform(0.85, 1.15)), min(size - 2, side * rng.uniform(0.85, 1.15))
    x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
    spec = world.categories[index]
    color = tuple(int(c) for c in np.clip(np.array(spec.color) + rng.integers(-20, 21, 3), 0, 255))
    spec.painter(ImageDraw.Draw(image), (x0, y0, x0 + w, y0 + h), color,
                 **({"detail": spec.detail} if spec.detail else {}))
    return image


def _write_crops(world: World, split: str, count: int, seed: int, sizes: WorldSizes, root: Path) -> None:
    rng = np.random.default_rng([seed, _stable_int(world.name), _stable_int(split), _stable_int("crops")])
    for spec in world.categories:
        (root / split / spec.name).mkdir(parents=True)
    for n in range(count):
        index = n % len(world.categories)
        image = render_crop(world, rng, index, sizes.image_size)
        image.save(root / split / world.categories[index].name / f"{n + 1:06d}.png", optimize=False)


QUESTIONS_PER_IMAGE = 3


def _write_questions(world: World, split: str, count: int, seed: int, sizes: WorldSizes, root: Path) -> None:
    """The split's scenes (as for detection) and questions about them in the VQAv2 layout, one answer each."""
    _write_split(world, split, count, seed, sizes, root)
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    objects: dict[int, list] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        objects[ann["image_id"]].append((ann["category_id"] - 1, ann["bbox"]))
    rng = np.random.default_rng([seed, _stable_int(world.name), _stable_int(split), _stable_int("vqa")])
    questions, annotations = [], []
    for image_id, objs in objects.items():
        for text, answer, kind in scene_questions(world, objs, rng, QUESTIONS_PER_IMAGE):
            qid = len(questions) + 1
            questions.append({"question_id": qid, "image_id": image_id, "question": text})
            annotations.append({"question_id": qid, "image_id": image_id, "question_type": kind,
                                "multiple_choice_answer": answer, "answers": [{"answer": answer, "answer_id": 1}]})
    (root / f"{split}_questions.json").write_text(json.dumps({"questions": questions}))
    (root / f"{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    (root / "answers.json").write_text(json.dumps(world_answers(world, sizes.max_objects)))


LAYOUTS = {"coco": _write_split, "crops": _write_crops, "vqa": _write_questions}


def default_cache_root() -> Path:
    return Path(os.environ.get("CONTINUAL_CACHE", Path.home() / ".cache" / "continual-vlp")) / "worlds"


def world_folder(name: str, seed: int = 0, sizes: WorldSizes = WorldSizes(), cache_root: Path | None = None,
                 layout: str = "coco") -> Path:
    """The folder holding the world in a layout (``coco`` scenes or ``crops``); generated on first use.

    Written to a temporary sibling and renamed into place, so a folder that
    exists is complete.
    """
    world = get_world(name)
    root = Path(cache_root or default_cache_root())
    if layout not in LAYOUTS:
        raise DataError(f"unknown world layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    target = root / (f"{name}-seed{seed}-{sizes.key()}" + ("" if layout == "coco" else f"-{layout}"))
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        LAYOUTS[layout](world, "train", sizes.train, seed, sizes, tmp)
        LAYOUTS[layout](world, "val", sizes.val, seed, sizes, tmp)
        (tmp / "world.json").write_text(json.dumps({"world": name, "seed": seed, "sizes": sizes.__dict__,
                                                    "layout": layout}, sort_keys=True))
        os.rename(tmp, target)
    except OSError:
        if not target.exists():
            raise
        # another process finished first; its copy is identical
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
