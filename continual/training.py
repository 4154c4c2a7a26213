"""Training settings and the learning-rate schedule shared by pretraining and PEFT module training.

AdamW, linear warm-up then cosine decay to 5% of the peak, gradient clipping;
the loop itself is continual/loop.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass
class TrainConfig:
    """How a module trains: AdamW for ``steps`` steps of ``batch_size`` images, linear warm-up over ``warmup``
    steps then cosine decay to 5% of ``lr`` (None: the method's ``default_lr``), gradients clipped to ``clip``;
    ``seed`` sets the module's initialisation and the data order.

        TrainConfig(steps=100, batch_size=8, lr=1e-3)
    """

    steps: int = 300  # optimizer steps
    batch_size: int = 8  # images per step
    lr: Optional[float] = None  # peak learning rate; None: the method's default_lr
    weight_decay: float = 1e-4  # AdamW's
    warmup: int = 30  # steps of linear warm-up before the cosine decay
    clip: float = 1.0  # gradient norm clip
    seed: int = 0  # the module's initialisation and the data order


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
