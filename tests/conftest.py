"""Shared fixtures: a tiny host and small synthetic worlds, built once per session."""
import logging

import pytest

import continual  # noqa: F401  (torchvision shim first, as in every entry point)
import transformers

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def tiny_host():
    from continual.hosts.grounding_dino import GroundingDinoHost

    return GroundingDinoHost.build_tiny(seed=0)


@pytest.fixture(scope="session")
def tiny_clip_host():
    from continual.hosts.dual_encoder import DualEncoderHost

    return DualEncoderHost.build_tiny(seed=0)


@pytest.fixture(scope="session")
def tiny_vilt_host():
    from continual.hosts.vilt import ViltHost

    return ViltHost.build_tiny(seed=0)


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("worlds")


@pytest.fixture(scope="session")
def small_sizes():
    from tasks.worlds import WorldSizes

    return WorldSizes(train=12, val=6)
