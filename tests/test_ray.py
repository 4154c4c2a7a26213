"""executor: ray on a local Ray of 2 workers, started once for this file: the same bytes as the local
executor, a worker killed mid-step, the driver killed mid-study."""
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from continual import engine
from continual.cli import main
from continual.config import load_config

ray = pytest.importorskip("ray")

CONTINUAL = str(Path(sys.executable).parent / "continual")
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
STUDY = ["policies=[all,own]", "seeds=[0,1]"]  # 2 seeds x 2 settings sharing their trainings and evaluations
TWO_AT_ONCE = "resources.num_cpus=1"  # 2 tasks side by side on the 2 CPUs, each computing with the driver's threads
COMPARED = ("results.json", "compat.json", "summary.json", "report.md")  # timing.json, state.json: timings


@pytest.fixture(autouse=True)
def cached_worlds(monkeypatch, world_cache):
    monkeypatch.setenv("CONTINUAL_CACHE", str(world_cache))  # the workers get the CONTINUAL_* variables too


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 one-CPU workers; each run of this file joins it (a start costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def local_study(tmp_path_factory, world_cache):
    """The smoke study over 2 seeds under the local executor."""
    os.environ["CONTINUAL_CACHE"] = str(world_cache)
    run_dir = tmp_path_factory.mktemp("local") / "study"
    engine.run(load_config(SMOKE, [f"run_dir={run_dir}", *STUDY]), progress=False)
    return run_dir


def outputs(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.name in COMPARED}


def test_smoke_study_over_seeds_under_ray_writes_the_local_bytes(local_ray, local_study, tmp_path):
    run_dir = tmp_path / "study"
    engine.run(load_config(SMOKE, [f"run_dir={run_dir}", "executor=ray", TWO_AT_ONCE, *STUDY]), progress=False)
    expected = outputs(local_study)
    assert len([name for name in expected if name.endswith("results.json")]) == 4
    assert outputs(run_dir) == expected
    own = json.loads((run_dir / "seed-1" / "smoke@policy=own" / "results.json").read_text())
    assert [m["reused_from"] for m in own["modules"]] == ["smoke@policy=all"] * 2  # trained once, in `all`


def test_cli_run_with_executor_ray_writes_the_local_results(local_ray, tmp_path, capsys):
    """The contract: `continual run configs/smoke.yaml run_dir=DIR executor=ray` writes the local results."""
    assert main(["run", str(SMOKE), f"run_dir={tmp_path / 'local'}"]) == 0
    assert main(["run", str(SMOKE), f"run_dir={tmp_path / 'ray'}", "executor=ray"]) == 0
    assert capsys.readouterr().out.count("# Run `smoke`") == 2
    assert (tmp_path / "ray" / "results.json").read_bytes() == (tmp_path / "local" / "results.json").read_bytes()


def test_a_method_from_the_configs_imports_reaches_the_workers(local_ray, tmp_path, monkeypatch, user_registries):
    """examples/custom_method.yaml imports its method from beside the config; run from another folder, the
    workers find it where the driver did."""
    monkeypatch.chdir(tmp_path)
    config = SMOKE.parents[1] / "examples" / "custom_method.yaml"
    for executor in ("local", "ray"):
        engine.run(load_config(config, [f"run_dir={tmp_path / executor}", f"executor={executor}"]), progress=False)
    assert (tmp_path / "ray" / "results.json").read_bytes() == (tmp_path / "local" / "results.json").read_bytes()


def test_a_step_that_diverges_in_a_worker_is_the_local_executors_one_line_error(local_ray, tmp_path, capsys):
    assert main(["run", str(SMOKE), f"run_dir={tmp_path / 'run'}", "executor=ray", "train.lr=1e20"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: stream.0 (base, adapter)") and len(err.splitlines()) == 1
    assert "the decoder's states are not finite at training step 2 of 4" in err


def test_a_worker_killed_mid_step_is_retried_from_its_checkpoint(local_ray, local_study, tmp_path, monkeypatch,
                                                                  caplog):
    caplog.set_level(logging.INFO, logger="continual")  # the workers log at the driver's level, as the CLI's
    # the first worker to reach its 3rd optimizer step dies (SIGKILL); Ray runs the task again in a fresh
    # worker, which goes on from the step's checkpoint (smoke.yaml: one every 2 steps)
    monkeypatch.setenv("CONTINUAL_CRASH_AT", "train-step:3")
    monkeypatch.setenv("CONTINUAL_CRASH_ONCE", str(tmp_path / "crashed"))
    run_dir = tmp_path / "run"
    engine.run(load_config(SMOKE, [f"run_dir={run_dir}", "executor=ray", "seeds=[0]"]), progress=False)
    assert (tmp_path / "crashed").exists()
    assert "resuming at step 2" in (run_dir / "seed-0" / "run.log").read_text()
    local = json.loads((local_study / "seed-0" / "smoke@policy=all" / "results.json").read_text())
    assert {**json.loads((run_dir / "seed-0" / "results.json").read_text()), "name": local["name"]} == local


def test_the_driver_killed_mid_study_resumes_to_the_same_bytes(local_ray, local_study, tmp_path):
    run_dir = tmp_path / "study"  # seed 0 of the study alone: 2 settings, 2 trainings, 6 writes of state.json
    command = [CONTINUAL, "run", str(SMOKE), f"run_dir={run_dir}", STUDY[0], "seeds=[0]", TWO_AT_ONCE, "--executor", "ray",
               "--address", local_ray]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUAL_CRASH")}
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**env, "CONTINUAL_CRASH_AT": "write:state.json:4"})  # after 2 zero-shot rows at most
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "summary.json").exists()
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after 1 finished step(s)" in resumed.stderr
    assert "1 training(s) to run" in resumed.stderr  # the other was written before the kill
    expected = {name: data for name, data in outputs(local_study).items() if name.startswith("seed-0/")}
    assert {name: data for name, data in outputs(run_dir).items() if name.startswith("seed-0/")} == expected


@pytest.mark.fast
def test_a_steps_resources_override_the_runs_and_cpu_tasks_hold_their_threads():
    from continual.config import Resources
    from continual.ray_executor import task_resources

    run = Resources(num_gpus=1)
    assert task_resources(run, None, threads=2, cuda=True) == {"num_cpus": 1, "num_gpus": 1}
    assert task_resources(run, Resources(num_cpus=8), 2, True) == {"num_cpus": 8, "num_gpus": 1}
    assert task_resources(run, Resources(num_gpus=0.5), 2, True) == {"num_cpus": 1, "num_gpus": 0.5}
    assert task_resources(Resources(), None, threads=4, cuda=False) == {"num_cpus": 4, "num_gpus": 0}


@pytest.mark.fast
def test_executor_ray_under_torchrun_is_refused(monkeypatch):
    from continual import ray_executor
    from continual.errors import RunError

    monkeypatch.setattr(ray_executor.distributed, "world_size", lambda: 2)
    with pytest.raises(RunError, match="executor ray starts its own workers: run it as one process, not under torchrun"):
        ray_executor.run_on_ray(None, [])
