"""Reliability: a killed run resumes to the same results; guards stop a run with a clear error."""
import errno
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from continual import atomic, engine, faults
from continual.atomic import OutputError
from continual.cli import main
from continual.config import load_config
from continual.errors import NonFiniteError
from continual.hosts.grounding_dino import GroundingDinoHost
from tasks.errors import DataError

CONTINUAL = str(Path(sys.executable).parent / "continual")
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
SMOKE_CLASSIFY = SMOKE.with_name("smoke-classify.yaml")


@pytest.fixture(autouse=True)
def cached_worlds(monkeypatch, world_cache):
    monkeypatch.setenv("CONTINUAL_CACHE", str(world_cache))


def continual_run(run_dir, *extra, crash_at=None, config=SMOKE, launcher=(CONTINUAL,), crash_rank=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUAL_CRASH")}
    if crash_at:
        env["CONTINUAL_CRASH_AT"] = crash_at
    if crash_rank is not None:
        env["CONTINUAL_CRASH_RANK"] = str(crash_rank)
    return subprocess.run([*launcher, "run", str(config), f"run_dir={run_dir}", *extra], capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, world_cache):
    """results.json of the smoke run, uninterrupted (in this process: the same bytes a console run writes)."""
    os.environ["CONTINUAL_CACHE"] = str(world_cache)
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    engine.run(load_config(SMOKE, [f"run_dir={run_dir}"]), progress=False)
    return (run_dir / "results.json").read_bytes()


# smoke.yaml: 2 tasks x 4 steps, a checkpoint every 2 steps; 3 evaluations of 2 tasks (8 images, 1 batch each).
# Crashes inside the loop are raised in this process; crashes during a write are real SIGKILLs of a real
# run (a killed write leaves its temporary file behind, which an exception would clean up).
CRASH_POINTS = {
    "mid-training, first task": "train-step:3",
    "mid-training, second task": "train-step:7",
    "mid-evaluation, zero-shot row": "eval-batch:1",
    "mid-evaluation, after the first task": "eval-batch:4",
    "during a checkpoint write": "write:checkpoint.pt:3",
    "during the run state write": "write:state.json:2",
}
KILL_POINTS = {
    "during a module write": "write:module:2",  # a folder: its temporary sibling is left behind
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_crash_then_resume_in_process_gives_identical_results(tmp_path, uninterrupted, point, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="continual")  # run.log gets the engine's messages, as under the CLI
    cfg = load_config(SMOKE, [f"run_dir={tmp_path / 'run'}"])
    monkeypatch.setenv("CONTINUAL_CRASH_AT", CRASH_POINTS[point])
    monkeypatch.setenv("CONTINUAL_CRASH_MODE", "raise")
    faults.reset()
    with pytest.raises(faults.SimulatedCrash):
        engine.run(cfg, progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
    monkeypatch.delenv("CONTINUAL_CRASH_AT")
    engine.run(cfg, resume=True, progress=False)
    assert (tmp_path / "run" / "results.json").read_bytes() == uninterrupted
    if point.startswith("mid-training"):  # it went on from the step's checkpoint, not from the step's start
        assert "resuming at step 2" in (tmp_path / "run" / "run.log").read_text()


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_sigkill_then_resume_gives_identical_results(tmp_path, uninterrupted, point):
    run_dir = tmp_path / "run"
    killed = continual_run(run_dir, crash_at=KILL_POINTS[point])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "results.json").exists()
    resumed = continual_run(run_dir, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run_dir / "results.json").read_bytes() == uninterrupted


TWO_PROCESSES = (TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "continual")


def test_two_processes_match_one_and_resume_after_one_rank_is_killed(tmp_path, uninterrupted):
    """torchrun, gloo: each global batch split over 2 ranks, gradients averaged, evaluation sharded; then rank 1
    SIGKILLed mid-training (torchrun ends the job) and the job restarted with --resume."""
    whole = continual_run(tmp_path / "whole", "device=cpu", launcher=TWO_PROCESSES)
    assert whole.returncode == 0, whole.stderr[-3000:]
    one, two = json.loads(uninterrupted), json.loads((tmp_path / "whole" / "results.json").read_text())
    for task, losses in one["losses"].items():
        assert two["losses"][task] == pytest.approx(losses, rel=1e-4)
    for row_one, row_two in zip(one["matrix"], two["matrix"], strict=True):
        assert row_two == pytest.approx(row_one, abs=0.01)
    assert whole.stdout.count("# Run `smoke`") == 1  # rank 0 speaks for the job

    run_dir = tmp_path / "killed"
    killed = continual_run(run_dir, "device=cpu", crash_at="train-step:6", crash_rank=1, launcher=TWO_PROCESSES)
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert not (run_dir / "results.json").exists()
    resumed = continual_run(run_dir, "device=cpu", "--resume", launcher=TWO_PROCESSES)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 2" in (run_dir / "run.log").read_text()
    assert (run_dir / "results.json").read_bytes() == (tmp_path / "whole" / "results.json").read_bytes()


def test_classification_stream_resumes_exactly_after_a_crash(tmp_path, monkeypatch):
    """The detection runs above are killed for real; this one crashes in process (the same resume path)."""
    engine.run(load_config(SMOKE_CLASSIFY, [f"run_dir={tmp_path / 'reference'}"]), progress=False)
    cfg = load_config(SMOKE_CLASSIFY, [f"run_dir={tmp_path / 'run'}"])
    monkeypatch.setenv("CONTINUAL_CRASH_AT", "train-step:7")  # mid-training, second task
    monkeypatch.setenv("CONTINUAL_CRASH_MODE", "raise")
    faults.reset()
    with pytest.raises(faults.SimulatedCrash):
        engine.run(cfg, progress=False)
    monkeypatch.delenv("CONTINUAL_CRASH_AT")
    engine.run(cfg, resume=True, progress=False)
    assert (tmp_path / "run" / "results.json").read_bytes() == (tmp_path / "reference" / "results.json").read_bytes()


def test_resume_of_a_finished_run_rebuilds_the_same_results(tmp_path, uninterrupted):
    cfg = load_config(SMOKE, [f"run_dir={tmp_path / 'run'}"])
    engine.run(cfg, progress=False)
    (tmp_path / "run" / "results.json").unlink()
    engine.run(cfg, resume=True, progress=False)
    assert (tmp_path / "run" / "results.json").read_bytes() == uninterrupted


def grown(tmp_path) -> Path:
    """The smoke stream with a third task appended (a stream that grows as tasks arrive)."""
    path = tmp_path / "grown.yaml"
    tasks = '  aquarium: {data: "synthetic:aquarium"}\n'
    path.write_text(SMOKE.read_text().replace(tasks, tasks + '  fruit: {data: "synthetic:fruit"}\n')
                    + "  - {task: fruit, method: sdpt}\n")
    return path


def test_a_killed_run_resumed_with_a_task_appended_trains_only_the_new_task(tmp_path, uninterrupted, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("CONTINUAL_CRASH_AT", "write:results.json:1")  # every step done, killed before the end
    monkeypatch.setenv("CONTINUAL_CRASH_MODE", "raise")
    faults.reset()
    with pytest.raises(faults.SimulatedCrash):  # --resume into a folder that does not exist starts the run
        engine.run(load_config(SMOKE, [f"run_dir={run_dir}"]), resume=True, progress=False)
    monkeypatch.delenv("CONTINUAL_CRASH_AT")
    finished = {p: p.stat().st_mtime_ns for p in (run_dir / "modules").rglob("*.safetensors")}
    engine.run(load_config(grown(tmp_path), [f"run_dir={run_dir}"]), resume=True, progress=False)
    reference, results = json.loads(uninterrupted), json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["rows"][:2] == reference["metrics"]["rows"]  # the earlier rows, as they were
    assert [row[:2] for row in results["matrix"][:2]] == reference["matrix"]
    assert [row[2] for row in results["matrix"]] == [None, None, results["metrics"]["rows"][2]["fruit"]["mAP"]]
    assert results["zero_shot"][:2] == reference["zero_shot"] and results["zero_shot"][2] is not None
    assert {t: results["losses"][t] for t in ("base", "aquarium")} == reference["losses"]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not trained again
    assert len(results["losses"]["fruit"]) == 4 and len(list((run_dir / "modules").iterdir())) == 3
    assert "not evaluated" in (run_dir / "report.md").read_text()
    assert (run_dir / "config.previous.yaml").read_text() != (run_dir / "config.yaml").read_text()


def test_a_changed_unfinished_step_trains_anew_not_from_its_old_checkpoint(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="continual")
    run_dir = tmp_path / "run"
    monkeypatch.setenv("CONTINUAL_CRASH_AT", "train-step:7")  # mid second task, its step-2 checkpoint written
    monkeypatch.setenv("CONTINUAL_CRASH_MODE", "raise")
    faults.reset()
    with pytest.raises(faults.SimulatedCrash):
        engine.run(load_config(SMOKE, [f"run_dir={run_dir}"]), progress=False)
    monkeypatch.delenv("CONTINUAL_CRASH_AT")
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["index"] == 1
    engine.run(load_config(SMOKE, [f"run_dir={run_dir}", "stream.1.train.lr=0.05"]), resume=True, progress=False)
    results = json.loads((run_dir / "results.json").read_text())
    assert [m["train"]["lr"] for m in results["modules"]] == [0.003, 0.05]
    log = (run_dir / "run.log").read_text()
    assert "step 1: training sdpt on aquarium (4 steps, lr 0.05)\n" in log and "resuming at step" not in log
    assert len(results["losses"]["aquarium"]) == 4


def test_nan_loss_stops_the_run_naming_task_and_step(tmp_path, monkeypatch):
    loss = GroundingDinoHost.loss
    calls = {"n": 0}

    def poisoned(self, batch):
        total, parts = loss(self, batch)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] == 3 else total), parts

    monkeypatch.setattr(GroundingDinoHost, "loss", poisoned)
    with pytest.raises(NonFiniteError, match=r"stream\.0 \(base, adapter\).*task 'base': the loss went non-finite \(nan\) "
                       r"at training step 3 of 4"):
        engine.run(load_config(SMOKE, [f"run_dir={tmp_path / 'run'}"]), progress=False)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 2 and all(torch.isfinite(v).all() for v in checkpoint["module"].values())


def test_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic.write_json(target, {"old": True})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="No space left on device"):
        atomic.write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}


def test_unwritable_run_folder_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", str(SMOKE), f"run_dir={blocker / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot write" in err


def test_too_long_phrase_is_refused_before_training(tmp_path):
    cfg_file = tmp_path / "long.yaml"
    long_phrase = " ".join(["very"] * 80) + " long fish"
    cfg_file.write_text(SMOKE.read_text().replace('aquarium: {data: "synthetic:aquarium"}',
                                                  f'aquarium: {{data: "synthetic:aquarium", phrases: {{fish: "{long_phrase}"}}}}'))
    with pytest.raises(DataError, match="task 'aquarium'.*longer than the text encoder's limit"):
        engine.run(load_config(cfg_file, [f"run_dir={tmp_path / 'run'}"]), progress=False)
    assert not (tmp_path / "run" / "state.json").exists()


def test_empty_phrase_is_refused(tmp_path):
    cfg_file = tmp_path / "empty.yaml"
    cfg_file.write_text(SMOKE.read_text().replace('aquarium: {data: "synthetic:aquarium"}',
                                                  'aquarium: {data: "synthetic:aquarium", phrases: {fish: "  "}}'))
    with pytest.raises(DataError, match="empty"):
        engine.run(load_config(cfg_file, [f"run_dir={tmp_path / 'run'}"]), progress=False)


@pytest.mark.parametrize("lr, where", [("1e6", "evaluating, the decoder's states are not finite"),
                                       ("1e20", "the decoder's states are not finite at training step 2 of 4"),
                                       ("1e38", "the update overflowed float32")])
def test_divergence_is_one_line_naming_the_step(tmp_path, capsys, lr, where):
    run_dir = tmp_path / "run"
    assert main(["run", str(SMOKE), f"run_dir={run_dir}", f"train.lr={lr}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: stream.0 (base, adapter)") and where in err and len(err.splitlines()) == 1
    for weights in run_dir.glob("modules/*/adapter_model.safetensors"):  # none, or finite
        from safetensors.torch import load_file
        assert all(torch.isfinite(t).all() for t in load_file(weights).values())


def test_a_diverged_run_resumes_with_a_corrected_rate(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    assert main(["run", str(SMOKE), f"run_dir={run_dir}", "train.lr=1e6"]) == 2  # a module saved, then diverged
    assert main(["run", str(SMOKE), "--resume", f"run_dir={run_dir}"]) == 0  # the default rate
    assert (run_dir / "results.json").read_bytes() == uninterrupted


def test_clipping_tames_finite_gradients_whose_norm_overflows_float32():
    """A deep host with random weights gives finite gradients near 1e22 (Grounding DINO-T's Swin, measured);
    their float32 norm is inf, which the guard took for a divergence. Normal gradients clip bit for bit as
    torch's clip_grad_norm_ does; an infinite gradient is still refused."""
    from continual.loop import clip_gradients

    huge = [torch.nn.Parameter(torch.zeros(96, 16)), torch.nn.Parameter(torch.zeros(96))]
    huge[0].grad, huge[1].grad = torch.full((96, 16), 5e21), torch.full((96,), -5e22)
    assert not torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in huge]))
    norm = clip_gradients(huge, 1.0)
    assert torch.isfinite(norm) and norm.item() == pytest.approx((96 * 16 * 5e21**2 + 96 * 5e22**2) ** 0.5, rel=1e-5)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in huge])).item() == pytest.approx(1.0, rel=1e-4)

    generator = torch.Generator().manual_seed(0)
    ours, torchs = ([torch.nn.Parameter(torch.zeros(8, 8)) for _ in range(3)] for _ in range(2))
    for a, b in zip(ours, torchs):
        a.grad = torch.randn(8, 8, generator=generator) * 10
        b.grad = a.grad.clone()
    assert torch.equal(clip_gradients(ours, 1.0), torch.nn.utils.clip_grad_norm_(torchs, 1.0))
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, torchs))

    ours[0].grad[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="the gradients went non-finite"):
        clip_gradients(ours, 1.0)
