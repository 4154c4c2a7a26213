"""The torchvision shim: the whole import stack works on the CPU torch wheel."""
import subprocess
import sys

import torch

from continual.compat import nms_reference


def test_import_stack_in_fresh_interpreter():
    # torchvision, transformers' Grounding DINO and Avalanche's detection
    # template with its evaluation plugin and TensorBoard logger must import.
    code = (
        "import continual, torchvision, torch\n"
        "from transformers import GroundingDinoForObjectDetection\n"
        "from avalanche.training.supervised.naive_object_detection import ObjectDetectionTemplate\n"
        "from avalanche.training.plugins import EvaluationPlugin\n"
        "from avalanche.logging import TensorboardLogger\n"
        "b = torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])\n"
        "print(torchvision.ops.nms(b, torch.tensor([.9, .8, .7]), 0.5).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[0, 2]"


def test_nms_reference_known_case():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 4, 4], [50, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.9, 0.8, 0.1])
    # box 1 (best) suppresses box 0 (IoU 0.9); box 2 overlaps box 1 by 16/90.
    assert nms_reference(boxes, scores, 0.5).tolist() == [1, 2, 3]
    assert nms_reference(boxes, scores, 0.1).tolist() == [1, 3]
    assert nms_reference(boxes[:0], scores[:0], 0.5).numel() == 0
