"""The cost benchmark runs on the tiny host with one repetition (figures are not checked here: bench/ prints them)."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "costs.py"


def test_costs_bench_runs_on_the_tiny_host():
    out = subprocess.run([sys.executable, str(BENCH), "--host", "tiny", "--reps", "1", "--batch", "2",
                          "--only", "sdpt", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert [r["method"] for r in rows] == ["sdpt"] * 4 + ["full_ft"]
    for row in rows:
        assert {"method", "gflops", "host_gflops", "trainable_params", "fraction", "latency_ratio", "step_ratio",
                "memory_ratio"} <= set(row)
    assert rows[0]["trainable_params"] == 10 * 128 * 2
    assert rows[-1]["step_ratio"] is None and rows[-1]["memory_ratio"] is None  # full FT is the reference
    assert all(r["step_ratio"] > 0 and r["memory_ratio"] > 0 for r in rows[:-1])


def test_costs_bench_counts_apt_on_the_tiny_vilt(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("costs_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # in process: no second interpreter start
    assert bench.main(["--host", "tiny-vilt", "--flops-only", "--only", "apt,deep_prompt", "--json"]) == 0
    rows = {(r["method"], r["variant"]): r for r in json.loads(capsys.readouterr().out)}
    assert {method for method, _ in rows} == {"apt", "deep_prompt", "full_ft"}
    apt, deep = rows["apt", "m=200"], rows["deep_prompt", "m'=200"]
    assert apt["trainable_params"] == 4 * (200 * 384 + 2 * 4 * 384 + 1)  # P, W1, W2, s per layer
    assert 1 < apt["flops_ratio"] < deep["flops_ratio"]  # no attention grows under APT
    # the sizes the study trains (m = 50): APT still below the deep prompt in its cheapest (keys and values) form
    assert 1 < rows["apt", "m=50"]["flops_ratio"] < rows["deep_prompt", "m'=50 keys-values"]["flops_ratio"]


def test_grounding_bench_linear_probe_reads_what_the_features_hold():
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("grounding_bench", BENCH.parent / "grounding.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (300,), generator=generator)
    noise = torch.randn(300, 16, generator=generator)
    informative = noise + 4 * torch.nn.functional.one_hot(labels, 16).float()
    assert bench.linear_probe(informative, labels) > 0.95
    assert bench.linear_probe(noise, labels) < 0.4  # chance is 1/6: the probe does not read labels off noise
