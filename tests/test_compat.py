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


def test_dependencies_are_ranges_and_this_machine_pins_them():
    """`pip install continual-vlp` must keep a user's torch: the package declares ranges; the exact versions
    (the CPU wheel here) come from the constraints file that the Makefile installs with."""
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    by_name = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower(): d for d in declared}
    for name in ("torch", "transformers"):
        assert ">=" in by_name[name] and "==" not in by_name[name], by_name[name]
    pinned = (root / "requirements" / "constraints.txt").read_text().split()
    assert {"torch==2.13.0", "transformers==5.23.0"} <= set(pinned)
    assert "-c requirements/constraints.txt" in (root / "Makefile").read_text()
