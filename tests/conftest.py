"""Shared fixtures: a tiny host and small synthetic worlds, built once per session."""
import logging

import pytest

import continual  # noqa: F401  (torchvision shim first, as in every entry point)
import transformers

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def tiny_host():
    from continual.hosts.grounding_dino import GroundingDinoHost

    return GroundingDinoHost.build_tiny(seed=0)


@pytest.fixture(scope="session")
def tiny_clip_host():
    from continual.hosts.dual_encoder import DualEncoderHost

    return DualEncoderHost.build_tiny(seed=0)


@pytest.fixture(scope="session")
def tiny_vilt_host():
    from continual.hosts.vilt import ViltHost

    return ViltHost.build_tiny(seed=0)


@pytest.fixture
def user_registries():
    """Methods, hosts and task kinds a test registers from user code are taken out again after it, and the
    user modules that registered them forgotten (so the next test's import registers them again)."""
    import sys

    from continual.hosts.base import HOSTS
    from prompts.base import METHODS
    from tasks.kinds import TASK_KINDS

    registries = (METHODS, HOSTS, TASK_KINDS)
    before, imported = tuple(map(dict, registries)), set(sys.modules)
    yield
    for registry, kept in zip(registries, before):
        for name in set(registry) - set(kept):
            registry.pop(name)
    for name in set(sys.modules) - imported:  # user code: neither installed nor the project's own packages
        path = getattr(sys.modules[name], "__file__", None) or ""
        if path and not path.startswith(sys.prefix) and name.split(".")[0] not in {"continual", "tasks", "prompts",
                                                                                   "evaluation"}:
            del sys.modules[name]


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("worlds")


@pytest.fixture(scope="session")
def small_sizes():
    from tasks.worlds import WorldSizes

    return WorldSizes(train=12, val=6)


def write_roboflow_export(world: str, target, world_cache, splits=("train", "valid", "test"), zero_width_box=False):
    """A synthetic world written the way Roboflow exports a dataset (ODinW's sets are such exports): one folder
    per split with ``_annotations.coco.json`` beside the images, category ids from 1 under a supercategory of
    id 0 that no box uses, and optionally one box of width 0 in the first split (real exports carry a few)."""
    import json
    import shutil
    from pathlib import Path

    from tasks.worlds import WorldSizes, world_folder

    source = world_folder(world, sizes=WorldSizes(train=2, val=2), cache_root=world_cache)
    target = Path(target)
    for split in splits:
        own = "train" if split == "train" else "val"
        coco = json.loads((source / "annotations" / f"instances_{own}.json").read_text())
        coco["categories"] = [{"id": 0, "name": f"{world}-things", "supercategory": "none"}] + [
            {"id": c["id"] + 1, "name": c["name"], "supercategory": f"{world}-things"} for c in coco["categories"]]
        for ann in coco["annotations"]:
            ann["category_id"] += 1
        if zero_width_box and split == splits[0]:
            coco["annotations"][0]["bbox"][2] = 0.0
        (target / split).mkdir(parents=True)
        for image in coco["images"]:
            shutil.copy(source / own / image["file_name"], target / split / image["file_name"])
        (target / split / "_annotations.coco.json").write_text(json.dumps(coco))
    return target


# The 13 ODinW sets under the folder names of GLIP's download, and the split each is evaluated on.
ODINW_FOLDERS = {
    "AerialMaritimeDrone/large": "valid", "Aquarium/Aquarium Combined.v2-raw-1024.coco": "valid",
    "CottontailRabbits": "valid", "EgoHands/generic": "mini_val",
    "NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco": "valid", "Packages/Raw": "valid",
    "PascalVOC": "valid", "pistols/export": "valid", "pothole": "valid", "Raccoon/Raccoon.v2-raw.coco": "valid",
    "ShellfishOpenImages/raw": "valid", "thermalDogsAndPeople": "valid", "VehiclesOpenImages/416x416": "mini_val",
}


@pytest.fixture(scope="session")
def odinw_standin(tmp_path_factory, world_cache):
    """A stand-in for ODINW_ROOT and COCO_ROOT: 13 Roboflow-layout folders from the novel worlds (one with a box
    of width 0) and the base world's val split in COCO's own layout."""
    import shutil

    from tasks.worlds import NOVEL_WORLDS, WorldSizes, world_folder

    root = tmp_path_factory.mktemp("standin")
    for n, (folder, evaluated) in enumerate(ODINW_FOLDERS.items()):
        write_roboflow_export(NOVEL_WORLDS[n % len(NOVEL_WORLDS)], root / "odinw" / folder, world_cache,
                              splits=("train", evaluated), zero_width_box=n == 1)
    base = world_folder("base", sizes=WorldSizes(train=2, val=2), cache_root=world_cache)
    (root / "coco" / "annotations").mkdir(parents=True)
    shutil.copy(base / "annotations" / "instances_val.json", root / "coco" / "annotations" / "instances_val2017.json")
    shutil.copytree(base / "val", root / "coco" / "val2017")
    return {"ODINW_ROOT": str(root / "odinw"), "COCO_ROOT": str(root / "coco")}
