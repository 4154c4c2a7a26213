"""Task evaluators with detectron2's ``reset / process / evaluate`` protocol, one per task kind.

``process(targets, predictions)`` takes one minibatch: per image its target
(as the task's data gives it) and the host's prediction; ``evaluate()``
returns every statistic as a dict of floats, the task's primary metric among
them (``mAP`` for detection, ``accuracy`` for classification, ``vqa_accuracy`` for VQA).
"""
from __future__ import annotations

from evaluation.coco_eval import coco_bbox_metrics

def _number(value) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def coco_detections(pred: dict, image_id: int, size, categories: list[dict]) -> list[dict]:
    """One image's predictions (xyxy fractions, scores, class indices) as COCO results (absolute xywh)."""
    w, h = (int(_number(v)) for v in size)
    out = []
    for (x0, y0, x1, y1), score, label in zip(pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist()):
        out.append({"image_id": int(_number(image_id)), "category_id": categories[label]["id"],
                    "bbox": [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h], "score": score})
    return out


class CocoEvaluator:
    """COCO bbox statistics (pycocotools / faster-coco-eval) over one validation split."""

    kind = "detection"

    def __init__(self, ground_truth: dict, categories: list[dict]):
        self.ground_truth, self.categories = ground_truth, categories
        self.reset()

    def reset(self) -> None:
        self._detections: list[dict] = []

    def process(self, targets, predictions) -> None:
        for target, pred in zip(targets, predictions):
            self._detections += coco_detections(pred, target["image_id"], target["size"], self.categories)

    def evaluate(self) -> dict[str, float]:
        return coco_bbox_metrics(self.ground_truth, self._detections)


class ClassificationEvaluator:
    """Top-1 accuracy, and the mean over classes of each class's accuracy (classes with no image left out)."""

    kind = "classification"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._hits = [0] * self.num_classes
        self._counts = [0] * self.num_classes

    def process(self, targets, predictions) -> None:
        for target, pred in zip(targets, predictions):
            label = int(_number(target["label"]))
            if not 0 <= label < self.num_classes:
                raise ValueError(f"label {label} out of range for {self.num_classes} classes")
            self._counts[label] += 1
            self._hits[label] += int(int(pred["scores"].argmax()) == label)

    def evaluate(self) -> dict[str, float]:
        total = sum(self._counts)
        seen = [h / c for h, c in zip(self._hits, self._counts) if c]
        return {"accuracy": sum(self._hits) / total if total else 0.0,
                "mean_class_accuracy": sum(seen) / len(seen) if seen else 0.0, "images": float(total)}


class VqaEvaluator:
    """VQA accuracy: per question the credit of the predicted answer (min(#annotators who gave it / 3, 1),
    as the data computed it into ``answer_scores``), averaged; exact match beside it."""

    kind = "vqa"

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._credit, self._exact, self._count = 0.0, 0, 0

    def process(self, targets, predictions) -> None:
        for target, pred in zip(targets, predictions):
            answer = int(pred["scores"].argmax())
            ids, scores = target["answer_ids"].tolist(), target["answer_scores"].tolist()
            credit = sum(s for i, s in zip(ids, scores) if i == answer)
            self._credit += credit
            self._exact += int(bool(ids) and ids[scores.index(max(scores))] == answer)
            self._count += 1

    def evaluate(self) -> dict[str, float]:
        n = self._count
        return {"vqa_accuracy": self._credit / n if n else 0.0, "exact_match": self._exact / n if n else 0.0,
                "questions": float(n)}
