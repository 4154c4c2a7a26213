"""Questions about synthetic scenes, generated from the scenes' own annotations (the VQA task kind).

Each scene gets a few questions of distinct types, drawn with a seeded rng:
- ``presence``: "is there a starfish?" -> yes / no (half the time about a class it lacks);
- ``count``: "how many starfish are there?" -> 0 .. max objects;
- ``colour``: "what colour is the leftmost object?" -> the named colour of its class;
- ``which``: "what is the largest object?" -> its class name;
- ``left_of``: "is the crab left of the shark?" -> yes / no (two classes seen once each).

A world's answer vocabulary is every answer its questions can have, in a
fixed order (yes, no, counts, colours, class names), so a task's vocabulary
does not depend on which questions were drawn; ``answer_vocabulary()`` with
no world is the union over all worlds (the tiny ViLT's head).
"""
from __future__ import annotations

import numpy as np

QUESTION_TYPES = ("presence", "count", "colour", "which", "left_of")
# Named colours; a class's colour is the nearest name to its painted RGB.
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 40),
           "purple": (140, 60, 170), "orange": (240, 140, 30), "pink": (240, 170, 220), "grey": (150, 160, 170),
           "white": (240, 240, 240), "black": (30, 30, 30), "brown": (150, 100, 50), "light blue": (150, 220, 255)}
POSITIONS = {"leftmost": lambda objs: min(objs, key=lambda o: _centre_x(o[1])),
             "rightmost": lambda objs: max(objs, key=lambda o: _centre_x(o[1])),
             "largest": lambda objs: max(objs, key=lambda o: o[1][2] * o[1][3])}


def colour_name(rgb) -> str:
    return min(COLOURS, key=lambda n: sum((a - b) ** 2 for a, b in zip(COLOURS[n], rgb)))


def _centre_x(bbox) -> float:
    return bbox[0] + bbox[2] / 2


def world_answers(world, max_objects: int) -> list[str]:
    """Every answer a world's questions can have, in a fixed order, each once (fruit's "orange" is a colour
    and a class)."""
    colours = sorted({colour_name(c.color) for c in world.categories})
    names = [c.name for c in world.categories]
    return list(dict.fromkeys(["yes", "no", *map(str, range(max_objects + 1)), *colours, *names]))


def answer_vocabulary(worlds, max_objects: int) -> list[str]:
    """The union of the worlds' answers, first-seen order."""
    out: dict[str, None] = {}
    for world in worlds:
        out.update(dict.fromkeys(world_answers(world, max_objects)))
    return list(out)


def _is_unique_position(objects, choose) -> bool:
    """The object a position picks must not tie with another (same centre or area)."""
    chosen = choose(objects)
    key = (_centre_x(chosen[1]), chosen[1][2] * chosen[1][3])
    return sum(1 for o in objects if (_centre_x(o[1]), o[1][2] * o[1][3]) == key) == 1


def scene_questions(world, objects: list[tuple[int, list[float]]], rng: np.random.Generator,
                    per_image: int) -> list[tuple[str, str, str]]:
    """Up to ``per_image`` (question, answer, type) about one scene; ``objects``: (class index, xywh box)."""
    names = [c.name for c in world.categories]
    present = sorted({i for i, _ in objects})
    absent = [i for i in range(len(names)) if i not in present]
    once = [i for i in present if sum(1 for j, _ in objects if j == i) == 1]
    makers = {
        "presence": lambda: _presence(names, present, absent, rng),
        "count": lambda: _count(names, objects, rng),
        "colour": lambda: _positional(world, objects, rng, colour=True),
        "which": lambda: _positional(world, objects, rng, colour=False),
        "left_of": lambda: _left_of(names, objects, once, rng),
    }
    usable = ["presence", "count"] + (["colour", "which"] if objects else []) + (["left_of"] if len(once) >= 2 else [])
    chosen = rng.choice(len(usable), size=min(per_image, len(usable)), replace=False)
    out = []
    for k in sorted(int(i) for i in chosen):
        made = makers[usable[k]]()
        if made is not None:
            out.append((*made, usable[k]))
    return out


def _presence(names, present, absent, rng):
    pool, answer = (present, "yes") if absent == [] or (present and rng.random() < 0.5) else (absent, "no")
    return f"is there a {names[int(rng.choice(pool))]}?", answer


def _count(names, objects, rng):
    index = int(rng.integers(len(names)))
    if objects and rng.random() < 0.67:  # mostly about a class in the scene, so counts above zero are common
        index = objects[int(rng.integers(len(objects)))][0]
    return f"how many {names[index]} are there?", str(sum(1 for i, _ in objects if i == index))


def _positional(world, objects, rng, colour: bool):
    position = list(POSITIONS)[int(rng.integers(len(POSITIONS)))]
    if not _is_unique_position(objects, POSITIONS[position]):
        return None
    spec = world.categories[POSITIONS[position](objects)[0]]
    if colour:
        return f"what colour is the {position} object?", colour_name(spec.color)
    return f"what is the {position} object?", spec.name


def _left_of(names, objects, once, rng):
    a, b = (int(i) for i in rng.choice(once, size=2, replace=False))
    box_a = next(box for i, box in objects if i == a)
    box_b = next(box for i, box in objects if i == b)
    return f"is the {names[a]} left of the {names[b]}?", "yes" if _centre_x(box_a) < _centre_x(box_b) else "no"
