"""A short training on the aquarium world against the base checkpoint's zero-shot mAP, through the engine.

Measured on 2 CPU cores (120 training / 40 val images): the shipped
checkpoint's zero-shot aquarium mAP is 0.023; 60 steps at each method's
default learning rate take 15-19 s (data, both evaluations and the run's files
included) and reach 0.070 (SDPT) and 0.091 (Adapter).
"""
import json

import pytest

from continual import engine
from continual.config import DataConfig, RunConfig, StepConfig, TaskConfig, validate
from continual.training import TrainConfig


@pytest.mark.parametrize("method", ["sdpt", "adapter"])
def test_short_training_beats_zero_shot(tmp_path, method):
    cfg = RunConfig(name=method, run_dir=str(tmp_path / method), data=DataConfig(train_images=120, val_images=40),
                    train=TrainConfig(steps=60), tasks={"aquarium": TaskConfig(data="synthetic:aquarium")},
                    stream=[StepConfig(task="aquarium", method=method)])
    validate(cfg, "test")
    results = json.loads((engine.run(cfg, progress=False) / "results.json").read_text())
    before, after = results["zero_shot"][0], results["matrix"][0][0]
    assert after > before + 0.02, (before, after)
