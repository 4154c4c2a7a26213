"""A short training on the aquarium world against the base checkpoint's zero-shot mAP, through the engine.

Measured on 2 CPU cores (see the issue notes): the base checkpoint's zero-shot
aquarium mAP is 0.0006; an Adapter (600 steps, about 75 s) reaches 0.04; SDPT
stays at noise level; the cause is open (see the issue notes).
"""
import json

import pytest

from continual import engine
from continual.config import DataConfig, RunConfig, StepConfig, TaskConfig, validate
from continual.training import TrainConfig


@pytest.mark.parametrize("method, steps", [
    ("adapter", 600),
    pytest.param("sdpt", 300, marks=pytest.mark.xfail(strict=True, reason="SDPT does not yet learn the aquarium "
                                                                           "world on the tiny host (open)")),
])
def test_short_training_beats_zero_shot(tmp_path, method, steps):
    cfg = RunConfig(name=method, run_dir=str(tmp_path / method), data=DataConfig(),
                    train=TrainConfig(steps=steps), tasks={"aquarium": TaskConfig(data="synthetic:aquarium")},
                    stream=[StepConfig(task="aquarium", method=method)])
    validate(cfg, "test")
    results = json.loads((engine.run(cfg, progress=False) / "results.json").read_text())
    before, after = results["zero_shot"][0], results["matrix"][0][0]
    assert after > before + 0.02, (before, after)
