"""Make a torchvision whose compiled extension cannot load importable.

The only torchvision release pinned to torch 2.13.0 (0.28.0) ships an extension
linked against CUDA libraries; next to the CPU torch wheel it fails to load and
``import torchvision`` dies at ``register_fake("torchvision::nms")`` because the
op schema was never defined. transformers imports torchvision whenever it is
installed, and Avalanche needs it, so one failure blocks the whole stack.

When, and only when, the extension does not load, this defines the ``nms`` and
``qnms`` schemas with a pure-torch CPU kernel before torchvision is imported,
and afterwards marks the ops present so ``torchvision.ops.nms`` works. Other
torchvision C++ ops (roi_align, deform_conv2d, ...) stay unavailable; nothing in
this project uses them.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_library: torch.library.Library | None = None  # kept alive: defs vanish with it


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of kept boxes by decreasing score."""
    order = scores.argsort(descending=True)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.long)


def _extension_path() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("_C*.so")) + sorted(Path(spec.origin).parent.glob("_C*.pyd"))
    return found[0] if found else None


def torchvision_extension_loads() -> bool:
    """True when torchvision is absent or its compiled ops load; False when broken."""
    path = _extension_path()
    if path is None:
        return importlib.util.find_spec("torchvision") is None or hasattr(torch.ops.torchvision, "nms")
    try:
        torch.ops.load_library(str(path))
    except OSError:
        return False
    return True


def install_torchvision_shim() -> bool:
    """Apply the shim if needed; returns True when it was applied (now or before)."""
    global _library
    if _library is not None:
        return True
    if "torchvision" in sys.modules or torchvision_extension_loads():
        return False
    _library = torch.library.Library("torchvision", "DEF")
    for name in ("nms", "qnms"):
        _library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _library.impl(name, nms_reference, "CPU")
    import torchvision.extension

    torchvision.extension._has_ops = lambda: True  # nms is present; see module docstring
    return True
