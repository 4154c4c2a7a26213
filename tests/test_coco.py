"""COCO-format loading: every fault is refused with the file and the fault named."""
import json

import pytest
from PIL import Image

from tasks.coco import CocoDetection, find_split, read_coco_json
from tasks.errors import DataError
from tasks.task import load_task

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`


def _valid():
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 12]},
                        {"id": 2, "image_id": 2, "category_id": 9, "bbox": [0, 0, 40, 30]}],
        "categories": [{"id": 9, "name": "crab"}, {"id": 7, "name": "fish"}],
    }


def _write(tmp_path, coco, images=True):
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(coco) if isinstance(coco, dict) else coco)
    if images:
        for name in ("a.png", "b.png"):
            Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / name)
    return ann


def _broken(change):
    coco = _valid()
    change(coco)
    return coco


BAD = {  # refused whatever data.strict says: the file itself is malformed
    "invalid json": ("{not json", "not valid JSON"),
    "missing section": (_broken(lambda c: c.pop("categories")), "missing list 'categories'"),
    "missing key": (_broken(lambda c: c["annotations"][0].pop("bbox")), "annotations[0] lacks key(s) bbox"),
    "duplicate ids": (_broken(lambda c: c["annotations"][1].update(id=1)), "duplicate annotations id(s) [1]"),
    "duplicate image ids": (_broken(lambda c: c["images"][1].update(id=1)), "duplicate images id(s) [1]"),
    "no categories": (_broken(lambda c: c.update(categories=[], annotations=[])), "no categories"),
    "zero-size image": (_broken(lambda c: c["images"][0].update(width=0)), "has size 0x30; width and height must be"),
    "non-integer id": (_broken(lambda c: c["images"][0].update(id=[1])), "has id [1] of type list; ids must be"),
    "bad bbox type": (_broken(lambda c: c["annotations"][0].update(bbox="2,3,4,5")), "bbox must be"),
    "bbox not finite": (_broken(lambda c: c["annotations"][0].update(bbox=[2, 3, float("nan"), 4])), "bbox must be"),
}
# isolated faults of one annotation: skipped and counted by default, refused with strict
SKIPPED = {
    "zero width": ("empty_box", lambda a: a.update(bbox=[2, 3, 0, 12]),
                   "annotation 1: bbox [2, 3, 0, 12] has width or height <= 0"),
    "negative height": ("empty_box", lambda a: a.update(bbox=[2, 3, 5, -1]), "width or height <= 0"),
    "box outside": ("box_outside_image", lambda a: a.update(bbox=[35, 3, 10, 12]), "outside image 1 (40x30)"),
    "missing image": ("unknown_image", lambda a: a.update(image_id=5), "refers to image 5"),
    "unknown category": ("unknown_category", lambda a: a.update(category_id=3), "unknown category_id 3"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_annotation_file_is_refused(tmp_path, case):
    coco, message = BAD[case]
    path = _write(tmp_path, coco, images=False)
    for strict in (False, True):
        with pytest.raises(DataError) as err:
            read_coco_json(path, strict=strict)
        assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_an_isolated_bad_annotation_is_skipped_or_refused_when_strict(tmp_path, case):
    fault, change, message = SKIPPED[case]
    path = _write(tmp_path, _broken(lambda c: change(c["annotations"][0])), images=False)
    coco, skipped = read_coco_json(path)
    assert [a["source_id"] for a in coco["annotations"]] == [2]  # the file's own id (boxes are numbered anew)
    assert skipped.counts == {fault: 1} and message in skipped.first[0] and skipped.file == str(path)
    assert message in skipped.summary() and "data.strict" in skipped.summary()
    with pytest.raises(DataError) as err:
        read_coco_json(path, strict=True)
    assert str(path) in str(err.value) and message in str(err.value) and "strict" in str(err.value)


def test_skipped_annotations_are_counted_per_fault_and_the_first_few_named(tmp_path):
    coco = _valid()
    coco["annotations"] += [{"id": 10 + i, "image_id": 1, "category_id": 7, "bbox": [1, 1, 0, 2]} for i in range(6)]
    coco["annotations"].append({"id": 30, "image_id": 1, "category_id": 4, "bbox": [1, 1, 2, 2]})
    kept, skipped = read_coco_json(_write(tmp_path, coco, images=False))
    assert len(kept["annotations"]) == 2 and skipped.total == 7
    assert skipped.counts == {"empty_box": 6, "unknown_category": 1}
    assert len(skipped.first) == 5 and skipped.first[0].startswith("annotation 10:")


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        read_coco_json(tmp_path / "nope.json")


def test_unreadable_and_missing_images(tmp_path):
    data = CocoDetection(_write(tmp_path, _valid()), tmp_path)
    (tmp_path / "a.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="a.png: cannot decode image"):
        data.verify_images()
    (tmp_path / "b.png").unlink()
    with pytest.raises(DataError, match="b.png: image file not found"):
        data[1]


def test_valid_file_loads_with_categories_sorted_by_id(tmp_path):
    data = CocoDetection(_write(tmp_path, _valid()), tmp_path)
    assert data.category_names == ["fish", "crab"]
    image, target = data[0]
    assert image.size == (40, 30)
    assert target["class_labels"].tolist() == [0]
    assert target["boxes"][0].tolist() == pytest.approx([7 / 40, 9 / 30, 10 / 40, 12 / 30])


def test_roboflow_and_glip_odinw_layouts_and_missing_split(tmp_path):
    (tmp_path / "valid").mkdir()
    (tmp_path / "valid" / "_annotations.coco.json").write_text("{}")
    assert find_split(tmp_path, "val")[0].name == "_annotations.coco.json"
    (tmp_path / "mini_val").mkdir()
    (tmp_path / "mini_val" / "annotations_without_background.json").write_text("{}")
    assert find_split(tmp_path, "mini_val") == (tmp_path / "mini_val" / "annotations_without_background.json",
                                                tmp_path / "mini_val")
    (tmp_path / "test_annotations_without_background.json").write_text("{}")  # GLIP's pistols/export
    assert find_split(tmp_path, "test") == (tmp_path / "test_annotations_without_background.json", tmp_path)
    with pytest.raises(DataError, match="no 'train' split found"):
        find_split(tmp_path, "train")


def test_unknown_task_and_world(tmp_path):
    with pytest.raises(DataError, match="unknown synthetic world 'atlantis'"):
        load_task("synthetic:atlantis", cache_root=tmp_path)
    with pytest.raises(DataError, match="not a known task"):
        load_task(str(tmp_path / "missing"))


def test_phrase_overrides(world_cache, small_sizes):
    task = load_task("synthetic:vehicles", phrase_overrides={"airplane": "aeroplane"},
                     sizes=small_sizes, cache_root=world_cache)
    assert "aeroplane" in task.phrases and "airplane" not in task.phrases
    with pytest.raises(DataError, match="unknown categories \\['zeppelin'\\]"):
        load_task("synthetic:vehicles", phrase_overrides={"zeppelin": "z"}, sizes=small_sizes, cache_root=world_cache)
