"""COCO bbox evaluation: mAP@[.5:.95], AP50, AP75, APs/m/l, AR1/10/100.

pycocotools is the reference; faster-coco-eval gives the same stats several
times faster and is used when installed (``backend="auto"``). Metrics that
pycocotools leaves undefined (no ground truth of that size) are -1, as there.
"""
from __future__ import annotations

import contextlib
import copy
import io

STAT_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("auto", "faster", "pycocotools")


def _backend(name: str):
    if name not in BACKENDS:
        raise ValueError(f"unknown COCO eval backend {name!r}; choose from {BACKENDS}")
    if name in ("auto", "faster"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster
            return COCO, COCOeval_faster
        except ImportError:
            if name == "faster":
                raise
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    return COCO, COCOeval


def coco_bbox_metrics(ground_truth: dict, detections: list[dict], backend: str = "auto") -> dict[str, float]:
    """Evaluate detections ({image_id, category_id, bbox xywh, score}) against a COCO dict.

    Every image of ``ground_truth`` is evaluated; an image with no detection
    counts as all misses. With no detections at all every AP and AR is 0.
    """
    coco_cls, eval_cls = _backend(backend)
    gt = copy.deepcopy(ground_truth)
    gt.setdefault("info", {})
    for ann in gt["annotations"]:
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        ann.setdefault("iscrowd", 0)
    if not detections:
        has_gt = bool(gt["annotations"])
        return {name: 0.0 if has_gt else -1.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):  # both backends print their tables
        coco_gt = _index(coco_cls, gt)
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        evaluator = eval_cls(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}


def _index(coco_cls, gt: dict):
    """A COCO object over an in-memory dict (pycocotools' constructor only reads files)."""
    coco = coco_cls()
    coco.dataset = gt
    coco.createIndex()
    return coco
