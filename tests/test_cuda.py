"""The CUDA path, on the T-sized Grounding DINO (random weights: it needs only the MiniLM package's tokenizer, so
it runs where the MiniLM weights are not installed). bench/gpu.sh runs these on a GPU machine (``-m cuda``);
without CUDA they are skipped."""
import json
from pathlib import Path

import pytest
import torch

import continual as cl

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
T_SIZE = ["host=builtin:t-size", "data.image_size=128", "train.steps=3", "eval_batch_size=4"]


@pytest.fixture(autouse=True)
def cached_worlds(monkeypatch, world_cache):
    monkeypatch.setenv("CONTINUAL_CACHE", str(world_cache))


def test_a_stream_trains_and_evaluates_on_cuda_in_bf16_with_fp32_weights(tmp_path):
    results = cl.run(SMOKE, [f"run_dir={tmp_path / 'run'}", *T_SIZE, "device=cuda", "precision=bf16"],
                     progress=False)
    losses = [v for task in results.stream.raw["losses"].values() for v in task]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert all(v is not None and 0 <= v <= 1 for row in results.matrix for v in row)
    from safetensors.torch import load_file

    for step in results.stream.steps:
        weights = load_file(tmp_path / "run" / step["folder"] / "adapter_model.safetensors")
        assert {t.dtype for t in weights.values()} == {torch.float32}


def test_fp32_on_cuda_follows_the_cpu(tmp_path):
    """The same stream in fp32 on CUDA and on the CPU: the first step's loss within 1e-3 (kernels differ, so the
    trainings drift apart after it)."""
    losses = {}
    for device in ("cuda", "cpu"):
        run_dir = tmp_path / device
        cl.run(SMOKE, [f"run_dir={run_dir}", *T_SIZE, f"device={device}", "precision=fp32"], progress=False)
        losses[device] = json.loads((run_dir / "results.json").read_text())["losses"]
    for task, cpu in losses["cpu"].items():
        assert losses["cuda"][task][0] == pytest.approx(cpu[0], rel=1e-3), task
