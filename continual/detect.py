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
            w, h = target["size"]
            for box, score, label in zip(pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist()):
                x0, y0, x1, y1 = box[0] * w, box[1] * h, box[2] * w, box[3] * h
                detections.append({"image_id": target["image_id"], "category_id": data.categories[label]["id"],
                                   "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    host.train(was_training)
    return detections


def evaluate_task(host, data: CocoDetection, phrases, batch_size: int = 16, progress: bool = True) -> dict:
    """COCO bbox metrics of the host on one dataset."""
    return coco_bbox_metrics(data.coco, detect(host, data, phrases, batch_size, progress=progress))
