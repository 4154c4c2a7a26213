"""The command line, as users and outside checks call it (the real console script)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

CONTINUAL = str(Path(sys.executable).parent / "continual")


def _run(*args, timeout=600):
    return subprocess.run([CONTINUAL, *args], capture_output=True, text=True, timeout=timeout)


def test_eval_json_contract_on_the_shipped_checkpoint():
    out = _run("eval", "--checkpoint", "builtin:tiny-base", "--task", "synthetic:base", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout)
    assert {"mAP", "AP50", "AP75", "AR100"} <= set(metrics)
    assert metrics["mAP"] >= 0.35, "the shipped checkpoint must reach base-world val mAP 0.35"


def test_list_tasks_names_the_aquarium_world():
    out = _run("eval", "--list-tasks")
    assert out.returncode == 0 and "synthetic:aquarium" in out.stdout.split()


def test_methods_json_contract():
    out = _run("methods", "--checkpoint", "builtin:tiny-base", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {row["method"]: row for row in json.loads(out.stdout)}
    assert {"sdpt", "adapter", "vpt", "lora", "bitfit", "coop", "linear_probe", "full_ft"} <= set(rows)
    for row in rows.values():
        assert row["fraction"] == pytest.approx(row["trainable_params"] / row["total_params"])
    assert rows["sdpt"]["trainable_params"] == 10 * 128 * 2  # k * E * fusion layers at the default k
    assert rows["full_ft"]["fraction"] == 1.0


def test_bad_input_is_one_line_error_not_a_traceback(tmp_path):
    out = _run("eval", "--checkpoint", "builtin:tiny-base", "--task", str(tmp_path / "nowhere"))
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_pretrain_command_writes_a_loadable_checkpoint(tmp_path):
    env_cache = {"CONTINUAL_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([CONTINUAL, "pretrain", "--out", str(tmp_path / "ckpt"), "--steps", "3",
                          "--train-images", "16"], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, **env_cache})
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "ckpt" / "pretrain.json").read_text())
    assert record["config"]["train"]["steps"] == 3 and "mAP" in record["base_val"]
    assert set(record["zero_shot"]) == {"synthetic:aquarium", "synthetic:fruit", "synthetic:vehicles",
                                        "synthetic:signs", "synthetic:space"}
    again = _run("eval", "--checkpoint", str(tmp_path / "ckpt"), "--task", "synthetic:space", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
