"""Real checkpoints' input: each host's Hugging Face image processor; non-square images keep their aspect,
batches of different sizes are padded with a pixel mask, and boxes come back in each image's own pixels."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, GroundingDinoImageProcessor, ViltImageProcessor

from continual.hosts.base import Batch
from continual.loading import PixelCache
from evaluation.evaluators import CocoEvaluator

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

# (image width, height), the red box in it (x0, y0, x1, y1 pixels)
SCENES = {1: ((640, 427), (100, 50, 400, 300)), 2: ((427, 640), (50, 200, 300, 600))}


def scene(size, box) -> Image.Image:
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1, 0] = 255
    return Image.fromarray(pixels)


def perfect_detector(host):
    """Stands in for the model: finds the red box in the padded batch and gives it as Grounding DINO does,
    cxcywh as fractions of the image's unpadded region, with a high logit on the phrase's tokens."""
    red = (1.0 - host.pixel_mean[0, 0, 0, 0]) / host.pixel_std[0, 0, 0, 0]

    def raw_outputs(pixel_values, prompt, labels=None, pixel_mask=None):
        boxes = []
        for pixels, mask in zip(pixel_values, pixel_mask):
            height, width = int(mask.any(1).sum()), int(mask.any(0).sum())
            ys, xs = torch.nonzero((pixels[0] > red / 2) & mask.bool(), as_tuple=True)
            x0, x1, y0, y1 = xs.min() / width, (xs.max() + 1) / width, ys.min() / height, (ys.max() + 1) / height
            boxes.append([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
        logits = torch.full((len(boxes), 1, prompt.input_ids.shape[1]), -10.0)
        start, end = prompt.spans[0]
        logits[..., start:end] = 10.0
        return SimpleNamespace(logits=logits, pred_boxes=torch.tensor(boxes).view(-1, 1, 4))

    return raw_outputs


def test_a_perfect_detection_on_non_square_images_scores_map_1_through_the_processor_path(tiny_host, monkeypatch):
    monkeypatch.setattr(tiny_host, "image_processor", GroundingDinoImageProcessor())  # a real checkpoint's
    monkeypatch.setattr(tiny_host, "raw_outputs", perfect_detector(tiny_host))
    images = [tiny_host.to_pixels(scene(*SCENES[i])) for i in SCENES]
    assert [im.shape for im in images] == [(3, 800, 1199), (3, 1199, 800)]  # shortest edge 800, aspect kept
    pixels, mask = tiny_host.pixel_batch(images)
    assert pixels.shape == (2, 3, 1199, 1199) and mask[0, 800:].sum() == 0 and mask[1, :, 800:].sum() == 0

    predictions = tiny_host.predict(Batch("detection", pixels, ["red box"], pixel_mask=mask))
    ground_truth = {"images": [{"id": i, "width": w, "height": h} for i, ((w, h), _) in SCENES.items()],
                    "categories": [{"id": 7, "name": "red box"}],
                    "annotations": [{"id": i, "image_id": i, "category_id": 7, "iscrowd": 0,
                                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
                                    for i, (_, (x0, y0, x1, y1)) in SCENES.items()]}
    evaluator = CocoEvaluator(ground_truth, ground_truth["categories"])
    evaluator.process([{"image_id": i, "size": size} for i, (size, _) in SCENES.items()], predictions)
    assert evaluator.evaluate()["mAP"] == pytest.approx(1.0)
    # the same boxes read as fractions of the padded batch (the mistake the mask prevents) score far less
    padded = [{**p, "boxes": p["boxes"] * torch.tensor([w / 1199, h / 1199] * 2)}
              for p, (w, h) in zip(predictions, [(1199, 800), (800, 1199)])]
    evaluator.reset()
    evaluator.process([{"image_id": i, "size": size} for i, (size, _) in SCENES.items()], padded)
    assert evaluator.evaluate()["mAP"] < 0.5


def test_vilt_answers_an_image_the_same_alone_or_padded_beside_a_larger_one(tiny_vilt_host, monkeypatch):
    """ViLT's processor keeps the aspect and pads; the padding's patches are masked and each image's position
    embeddings fit its own grid, so a batch mate of another shape changes nothing."""
    processor = ViltImageProcessor(size={"shortest_edge": 64})  # a real checkpoint's rule at a small size
    monkeypatch.setattr(tiny_vilt_host, "image_processor", processor)
    wide, tall = (tiny_vilt_host.to_pixels(scene(*SCENES[i])) for i in SCENES)
    assert wide.shape == (3, 64, 96) and tall.shape == (3, 96, 64)
    answers = sorted(tiny_vilt_host.model.config.label2id)[:5]

    def logits(images):
        pixels, mask = tiny_vilt_host.pixel_batch(images)
        questions = ["how many red squares are there"] * len(images)
        return tiny_vilt_host.logits(Batch("vqa", pixels, answers, questions=questions, pixel_mask=mask))

    with torch.no_grad():
        together = logits([wide, tall])
        torch.testing.assert_close(together[0], logits([wide])[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(together[1], logits([tall])[0], rtol=1e-4, atol=1e-5)


def test_clip_processor_centre_crops_a_square(tiny_clip_host, monkeypatch):
    monkeypatch.setattr(tiny_clip_host, "image_processor", CLIPImageProcessor())
    assert tiny_clip_host.to_pixels(scene(*SCENES[1])).shape == (3, 224, 224)


def test_pixel_cache_sizes_each_image_once_within_its_budget():
    calls = []

    class Data:
        def open_image(self, index):
            calls.append(index)
            return index

    cache = PixelCache(lambda index: torch.zeros(3, 32, 32 + index, dtype=torch.uint8), max_mb=1)
    data = Data()
    first = cache(data, 0)
    assert cache(data, 0) is first and calls == [0]  # read and resized once
    for index in range(1, 400):  # 3 * 32 * (32 + index) bytes each: 1 MB is spent near index 120
        cache(data, index)
    cache(data, 399)
    assert calls.count(399) == 2 and calls.count(1) == 1
