"""Run a host over a dataset: batches for training, COCO detections for evaluation."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from evaluation.coco_eval import coco_bbox_metrics
from tasks.coco import CocoDetection


def collate(host, items):
    """(PIL image, target) items -> (pixel_values, targets) for ``host.loss``."""
    images, targets = zip(*items)
    return host.preprocess(list(images)), list(targets)


def coco_detections(pred: dict, image_id: int, size, categories: list[dict]) -> list[dict]:
    """One image's predictions (xyxy fractions, scores, phrase indices) as COCO results (absolute xywh)."""
    w, h = (int(v) for v in size)
    out = []
    for (x0, y0, x1, y1), score, label in zip(pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist()):
        out.append({"image_id": int(image_id), "category_id": categories[label]["id"],
                    "bbox": [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h], "score": score})
    return out


@torch.no_grad()
def detect(host, data: CocoDetection, phrases, batch_size: int = 16, top_k: int = 100, progress: bool = True):
    """COCO-style detections (absolute xywh boxes) for every image of ``data``."""
    detections = []
    was_training = host.training
    host.eval()
    starts = range(0, len(data), batch_size)
    for start in tqdm(starts, desc="eval", leave=False, disable=not progress):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        pixels, targets = collate(host, items)
        for pred, target in zip(host.predict(pixels, phrases, top_k=top_k), targets):
            detections += coco_detections(pred, target["image_id"], target["size"], data.categories)
    host.train(was_training)
    return detections


def evaluate_task(host, data: CocoDetection, phrases, batch_size: int = 16, progress: bool = True) -> dict:
    """COCO bbox metrics of the host on one dataset."""
    return coco_bbox_metrics(data.coco, detect(host, data, phrases, batch_size, progress=progress))
