"""A short training of SDPT and of an Adapter on the aquarium world beats the base checkpoint's zero-shot mAP."""
import pytest

from continual.finetune import finetune
from continual.hosts.grounding_dino import GroundingDinoHost
from continual.training import TrainConfig
from prompts import METHODS
from tasks.task import load_task


@pytest.fixture(scope="module")
def base_host():
    return GroundingDinoHost.from_pretrained("builtin:tiny-base")


@pytest.mark.parametrize("method", ["sdpt", "adapter"])
def test_short_training_beats_zero_shot(base_host, method):
    task = load_task("synthetic:aquarium")
    fingerprint = base_host.fingerprint()
    cfg = TrainConfig(steps=150, lr=METHODS[method].default_lr)
    result = finetune(base_host, task, method, None, cfg, progress=False)
    assert result.after["mAP"] > result.before["mAP"] + 0.02, (result.before["mAP"], result.after["mAP"])
    assert base_host.fingerprint() == fingerprint
