"""COCO evaluation on cases with known answers, and backend agreement."""
import random
import warnings

import pytest

from evaluation.coco_eval import STAT_NAMES, coco_bbox_metrics

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

GT = {
    "images": [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3)],
    "categories": [{"id": 1, "name": "fish"}, {"id": 2, "name": "crab"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 20, 40, 40]},
        {"id": 3, "image_id": 3, "category_id": 1, "bbox": [5, 5, 60, 60]},
    ],
}


def _perfect():
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
            for a in GT["annotations"]]


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_perfect_predictions_score_one(backend):
    metrics = coco_bbox_metrics(GT, _perfect(), backend)
    assert set(metrics) == set(STAT_NAMES)
    for name in ("mAP", "AP50", "AP75", "AR1", "AR100"):
        assert metrics[name] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_known_shift(backend):
    # Shifting every 40x40 box right by 8 px gives IoU 32*40 / (48*40) = 0.667:
    # a hit at thresholds .50-.65 (4 of 10), a miss above. Box 3 stays exact.
    dets = _perfect()
    for d in dets[:2]:
        d["bbox"][0] += 8
    metrics = coco_bbox_metrics(GT, dets, backend)
    # Category 1 has one exact and one shifted box, category 2 one shifted box.
    hits = [0.5 + 0.05 * i <= 0.65 + 1e-9 for i in range(10)]
    cat1 = [1.0 if hit else _ap_one_of_two() for hit in hits]
    cat2 = [1.0 if hit else 0.0 for hit in hits]
    assert metrics["mAP"] == pytest.approx(sum(cat1 + cat2) / 20, abs=1e-6)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx((_ap_one_of_two() + 0.0) / 2, abs=1e-6)


def _ap_one_of_two():
    """101-point interpolated AP when the top-scored of 2 detections is right and the other wrong.

    All scores tie at 0.9, so pycocotools' stable sort keeps input order:
    the shifted box (a false positive above .65) comes first, then the exact one.
    Precision is 0.5 at recall 0.5, then stays 0.5 on the interpolated curve.
    """
    return 0.5 * 51 / 101


def test_no_predictions_give_zero():
    metrics = coco_bbox_metrics(GT, [])
    assert metrics["mAP"] == 0.0 and metrics["AR100"] == 0.0


def test_backends_agree_on_random_detections():
    rng = random.Random(0)
    dets = [{"image_id": rng.choice([1, 2, 3]), "category_id": rng.choice([1, 2]),
             "bbox": [rng.uniform(0, 50), rng.uniform(0, 50), rng.uniform(5, 50), rng.uniform(5, 50)],
             "score": rng.random()} for _ in range(60)] + _perfect()
    fast, ref = coco_bbox_metrics(GT, dets, "faster"), coco_bbox_metrics(GT, dets, "pycocotools")
    for name in STAT_NAMES:
        assert fast[name] == pytest.approx(ref[name], abs=1e-12), name


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown COCO eval backend"):
        coco_bbox_metrics(GT, [], "detectron")


def test_a_perfect_detector_scores_one_on_annotations_numbered_from_zero(tmp_path):
    """Roboflow exports (ODinW) number their first box 0, which COCO evaluation reads as "unmatched": loading
    numbers the boxes anew from 1."""
    import json

    from tasks.coco import read_coco_json

    exported = {**GT, "images": [{**im, "file_name": f"{im['id']}.png"} for im in GT["images"]],
                "annotations": [{**a, "id": a["id"] - 1} for a in GT["annotations"]]}
    (tmp_path / "instances.json").write_text(json.dumps(exported))
    coco, _ = read_coco_json(tmp_path / "instances.json")
    assert [a["source_id"] for a in coco["annotations"]] == [0, 1, 2]
    for backend in ("faster", "pycocotools"):
        assert coco_bbox_metrics(coco, _perfect(), backend)["mAP"] == pytest.approx(1.0)
        with warnings.catch_warnings():  # faster-coco-eval warns of id 0
            warnings.simplefilter("ignore")
            assert coco_bbox_metrics(exported, _perfect(), backend)["mAP"] < 0.9  # what the ids from 0 did
