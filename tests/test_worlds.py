"""Synthetic worlds: deterministic, COCO-valid, with the promised categories."""
import filecmp

import torch

from tasks.coco import read_coco_json
from tasks.vocabulary import COLOURS, SHAPES, PromptSampler, held_out_phrase, split_phrase, swapped_phrase
from tasks.worlds import HELD_OUT_COMBOS, NOVEL_WORLDS, PRETRAINING_WORLDS, WORLDS, WorldSizes, world_folder
import pytest

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`


def _same_tree(a, b):
    cmp = filecmp.dircmp(a, b)
    files = cmp.common_files
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    return (not cmp.left_only and not cmp.right_only and not mismatch and not errors
            and all(_same_tree(a / d, b / d) for d in cmp.common_dirs))


def test_same_seed_gives_byte_identical_files(tmp_path):
    sizes = WorldSizes(train=5, val=3)
    a = world_folder("aquarium", seed=3, sizes=sizes, cache_root=tmp_path / "a")
    b = world_folder("aquarium", seed=3, sizes=sizes, cache_root=tmp_path / "b")
    assert _same_tree(a, b)
    c = world_folder("aquarium", seed=4, sizes=sizes, cache_root=tmp_path / "b")
    assert not filecmp.cmp(a / "train" / "000001.png", c / "train" / "000001.png", shallow=False)


def test_generated_once_then_cached(tmp_path):
    sizes = WorldSizes(train=2, val=2)
    folder = world_folder("fruit", sizes=sizes, cache_root=tmp_path)
    stamp = (folder / "world.json").stat().st_mtime_ns
    assert world_folder("fruit", sizes=sizes, cache_root=tmp_path) == folder
    assert (folder / "world.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_world_catalogue():
    assert len(WORLDS["base"].categories) >= 12
    assert WORLDS["base-scenes"].categories == WORLDS["base"].categories
    assert len(NOVEL_WORLDS) >= 5 and not set(NOVEL_WORLDS) & set(PRETRAINING_WORLDS)
    assert {"fish", "jellyfish", "starfish", "shark", "crab"} <= {c.name for c in WORLDS["aquarium"].categories}
    names = [c.name for w in ("base", *NOVEL_WORLDS) for c in WORLDS[w].categories]
    assert len(names) == len(set(names))  # a novel world shares no category with the base world


def test_probe_words_and_held_out_combinations():
    """The grounding probes' words (bench/grounding.py): held-out words are no pretraining word, the combos
    world recombines the base world's colours and shapes into categories it lacks."""
    words = [*COLOURS.values(), *SHAPES.values()]
    assert not {w for ws in words for w in ws.held_out} & {w for ws in words for w in ws.train}
    base = [c.name for c in WORLDS["base"].categories]
    assert held_out_phrase("red circle") == "crimson ball" and swapped_phrase("red circle") == "blue circle"
    assert all(swapped_phrase(p) != p for p in base)
    combos = [c.name for c in WORLDS["combos"].categories]
    assert not set(combos) & set(base) and "combos" not in NOVEL_WORLDS
    for part in (0, 1):
        assert {split_phrase(p)[part] for p in combos} <= {split_phrase(p)[part] for p in base}


def test_prompt_sampler_names_present_and_absent_categories_in_drawn_words():
    categories = [c.name for c in WORLDS["grounding"].categories]
    assert len(categories) == 30 and not {f"{c} {s}" for c, s in HELD_OUT_COMBOS} & set(categories)
    sampler = PromptSampler(categories, negatives=6, seed=0)
    targets = [{"class_labels": torch.tensor([0, 5])}, {"class_labels": torch.tensor([5])}]
    names = {0: set(), 5: set()}
    for _ in range(30):
        phrases, relabelled = sampler(targets)
        assert len(phrases) == 2 + 6 and relabelled[1]["class_labels"].tolist() == [relabelled[0]["class_labels"][1]]
        for category, label in zip((0, 5), relabelled[0]["class_labels"].tolist()):
            colour, shape = split_phrase(categories[category])
            colour_word, shape_word = phrases[label].split(" ")
            assert colour_word in COLOURS[colour].train and shape_word in SHAPES[shape].train
            names[category].add(phrases[label])
    assert all(len(n) > 3 for n in names.values())  # drawn anew at each step


def test_attribute_steps_name_every_colour_or_every_shape_and_label_each_box_by_it():
    categories = ["red circle", "blue circle", "red square", "green star"]
    sampler = PromptSampler(categories, negatives=2, seed=0, attributes=1.0)
    targets = [{"class_labels": torch.tensor([0, 1])}, {"class_labels": torch.tensor([2, 3])}]
    kinds = []
    for _ in range(4):
        phrases, relabelled = sampler(targets)
        labels = [int(c) for t in relabelled for c in t["class_labels"]]
        kind = 0 if phrases[0] in {w for words in COLOURS.values() for w in words.train} else 1
        table = COLOURS if kind == 0 else SHAPES
        assert len(phrases) == len({split_phrase(c)[kind] for c in categories})  # every value once, absent too
        for category, label in zip((0, 1, 2, 3), labels):
            assert phrases[label] in table[split_phrase(categories[category])[kind]].train
        kinds.append(kind)
    assert kinds == [1, 0, 1, 0]  # shape and colour in turn


def test_every_world_is_valid_coco(world_cache, small_sizes):
    for name, world in WORLDS.items():
        folder = world_folder(name, sizes=small_sizes, cache_root=world_cache)
        for split, count in (("train", small_sizes.train), ("val", small_sizes.val)):
            coco, _ = read_coco_json(folder / "annotations" / f"instances_{split}.json", strict=True)  # boxes valid
            assert len(coco["images"]) == count
            assert [c["name"] for c in coco["categories"]] == [c.name for c in world.categories]
            assert coco["annotations"], f"{name}/{split} has no objects"


def test_base_scenes_draws_every_background():
    import numpy as np

    from tasks.worlds import BACKGROUNDS, any_bg, plain_bg

    assert WORLDS["base-scenes"].background is any_bg
    rng = np.random.default_rng(0)
    corners = {tuple(int(c) // 64 for c in any_bg(rng, 16)[0, 0]) for _ in range(60)}
    assert len(corners) >= len(BACKGROUNDS) - 1  # road and plain may share a coarse grey bin
    plain = {tuple(int(c) // 64 for c in plain_bg(rng, 16)[0, 0]) for _ in range(60)}
    assert len(plain) <= 2
