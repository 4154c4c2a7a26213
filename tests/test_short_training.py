"""A short training on the aquarium world against the base checkpoint's zero-shot mAP.

Measured on 2 CPU cores (see the issue notes): the base checkpoint's zero-shot
aquarium mAP is 0.0006; an Adapter (600 steps, 74 s) reaches 0.044; SDPT stays
at noise level (0.0012 after 300 steps); the cause is open (see the issue notes).
"""
import pytest

from continual.finetune import finetune
from continual.hosts.grounding_dino import GroundingDinoHost
from continual.training import TrainConfig
from prompts import METHODS
from tasks.task import load_task


@pytest.fixture(scope="module")
def base_host():
    return GroundingDinoHost.from_pretrained("builtin:tiny-base")


@pytest.mark.parametrize("method, steps", [
    ("adapter", 600),
    pytest.param("sdpt", 300, marks=pytest.mark.xfail(strict=True, reason="SDPT does not yet learn the aquarium "
                                                                           "world on the tiny host (open)")),
])
def test_short_training_beats_zero_shot(base_host, method, steps):
    task = load_task("synthetic:aquarium")
    fingerprint = base_host.fingerprint()
    cfg = TrainConfig(steps=steps, lr=METHODS[method].default_lr)
    result = finetune(base_host, task, method, None, cfg, progress=False)
    assert base_host.fingerprint() == fingerprint
    assert result.after["mAP"] > result.before["mAP"] + 0.02, (result.before["mAP"], result.after["mAP"])
