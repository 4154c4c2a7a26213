"""Classification tasks: synthetic crops, ImageFolder trees, arrow shards, few-shot subsets, bad input, the evaluator."""
import io
import json
import shutil

import pyarrow as pa
import pytest
import torch
from PIL import Image

from evaluation.evaluators import ClassificationEvaluator
from tasks.classification import load_classification
from tasks.errors import DataError
from tasks.task import load_task
from tasks.worlds import WORLDS, WorldSizes, world_folder

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`


def _png(color=(200, 30, 30), size=16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_folder(root, classes=("cat", "dog"), per_class=3):
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                (root / split / c / f"{i}.png").write_bytes(_png())
    return root


def _shards(root, labels_train, labels_val, classes=None):
    root.mkdir(parents=True, exist_ok=True)
    for split, labels in (("train", labels_train), ("val", labels_val)):
        table = pa.table({"image": [_png() for _ in labels], "label": labels})
        with pa.OSFile(str(root / f"{split}_0.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(classes))
    return root


def test_synthetic_crops_are_balanced_and_deterministic(world_cache, small_sizes, tmp_path):
    task = load_task("synthetic:aquarium", kind="classification", sizes=small_sizes, cache_root=world_cache)
    assert task.phrases == sorted(c.name for c in WORLDS["aquarium"].categories)  # ImageFolder: sorted folders
    assert task.metric == "accuracy"
    counts = torch.bincount(torch.tensor([s.label for s in task.train.samples]))
    assert counts.max() - counts.min() <= 1 and len(task.train) == small_sizes.train
    image, target = task.val[0]
    assert image.size == (small_sizes.image_size,) * 2 and target == {"image_id": 0, "label": 0}
    again = world_folder("aquarium", sizes=small_sizes, cache_root=tmp_path, layout="crops")
    first = task.root / "val" / "fish" / "000001.png"
    assert first.read_bytes() == (again / "val" / "fish" / "000001.png").read_bytes()


def test_few_shot_draws_k_per_class_seeded_and_records_them(world_cache):
    sizes = WorldSizes(train=36, val=12)  # 3 training images per class of the 12
    a = load_task("synthetic:base", kind="classification", shots=2, seed=3, sizes=sizes, cache_root=world_cache)
    b = load_task("synthetic:base", kind="classification", shots=2, seed=3, sizes=sizes, cache_root=world_cache)
    c = load_task("synthetic:base", kind="classification", shots=2, seed=4, sizes=sizes, cache_root=world_cache)
    assert len(a.train) == 24 and sorted(s.label for s in a.train.samples) == sorted(list(range(12)) * 2)
    assert a.record["shots"] == 2 and a.record["shot_indices"] == b.record["shot_indices"]
    assert c.record["shot_indices"] != a.record["shot_indices"]
    with pytest.raises(DataError, match="shots=5 but class"):
        load_task("synthetic:base", kind="classification", shots=5, sizes=sizes, cache_root=world_cache)


def test_image_folder_and_arrow_shards_load(tmp_path):
    train, val = load_classification(_image_folder(tmp_path / "folder"))
    assert train.class_names == ["cat", "dog"] and len(train) == 6 and val[5][1]["label"] == 1
    train, val = load_classification(_shards(tmp_path / "ints", [0, 1, 1], [1, 0], classes=["cat", "dog"]))
    assert train.class_names == ["cat", "dog"] and [s.label for s in train.samples] == [0, 1, 1]
    assert val.open_image(0).size == (16, 16)
    train, val = load_classification(_shards(tmp_path / "names", ["dog", "cat"], ["cat"]))
    assert train.class_names == ["dog", "cat"] and val.samples[0].label == 1


@pytest.mark.parametrize("make, message", [
    (lambda r: shutil.rmtree(_image_folder(r) / "val"), r"no 'val' split; looked for val/CLASS/"),
    (lambda r: [(r / s / "cat").mkdir(parents=True) for s in ("train", "val")], r"class 'cat' has no images"),
    (lambda r: _shards(r, [0, 3], [0], classes=["cat", "dog"]), r"train_0.arrow row 1: label 3 out of range"),
    (lambda r: _shards(r, [0, 1], [0]), r"integer labels need .*classes.json"),
])
def test_bad_classification_folders_are_refused(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message):
        load_classification(tmp_path)


def test_unreadable_image_names_the_file(tmp_path):
    root = _image_folder(tmp_path)
    (root / "val" / "dog" / "1.png").write_bytes(b"not a png")
    _, val = load_classification(root)
    with pytest.raises(DataError, match=r"val/dog/1.png: cannot decode image"):
        val.open_image(4)


def test_accuracy_and_mean_class_accuracy():
    evaluator = ClassificationEvaluator(3)
    scores = torch.tensor([[.9, .1, 0], [.2, .8, 0], [.6, .4, 0], [.1, .2, .7]])
    evaluator.process([{"label": torch.tensor(l)} for l in (0, 1, 1, 0)], [{"scores": s} for s in scores])
    result = evaluator.evaluate()
    assert result["accuracy"] == 0.5  # images 0 and 1 right
    assert result["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 / 2) / 2)  # class 2 has no image
    evaluator.reset()
    assert evaluator.evaluate()["accuracy"] == 0.0
