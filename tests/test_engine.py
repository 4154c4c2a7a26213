"""The stream engine on a 2-task miniature stream (tiny data, a few steps: seconds per run)."""
import json
from pathlib import Path

import pytest
import torch

from continual import engine, loop, streams
from continual.config import load_config
from continual.errors import IntegrityError, RunError
from continual.loading import StepSampler

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
SMOKE_CLASSIFY = SMOKE.with_name("smoke-classify.yaml")


@pytest.fixture(autouse=True)
def cached_worlds(monkeypatch, world_cache):
    monkeypatch.setenv("CONTINUAL_CACHE", str(world_cache))


def run_smoke(tmp_path, *overrides, name="run", config=SMOKE):
    cfg = load_config(config, [f"run_dir={tmp_path / name}", *overrides])
    run_dir = engine.run(cfg, progress=False)
    return run_dir, json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, world_cache):
    """The smoke stream, run once for the tests that only read its outputs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTINUAL_CACHE", str(world_cache))
        return run_smoke(tmp_path_factory.mktemp("smoke"))


@pytest.fixture(scope="module")
def smoke_classify(tmp_path_factory, world_cache):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTINUAL_CACHE", str(world_cache))
        return run_smoke(tmp_path_factory.mktemp("smoke-classify"), config=SMOKE_CLASSIFY)


def test_miniature_stream_writes_every_output(smoke):
    run_dir, results = smoke
    assert results["tasks"] == ["base", "aquarium"]
    assert len(results["zero_shot"]) == 2
    assert [len(row) for row in results["matrix"]] == [2, 2]
    assert all(isinstance(v, float) for row in results["matrix"] for v in row)
    assert {"final_average", "bwt", "fwt", "forgetting", "retention"} <= set(results["derived"])
    assert [(m["task"], m["method"]) for m in results["modules"]] == [("base", "adapter"), ("aquarium", "sdpt")]
    assert results["modules"][1]["trainable_params"] == 10 * 128 * 2
    for name in ("config.yaml", "report.md", "plots/matrix.png", "run.log", "timing.json", "state.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    for module in results["modules"]:
        assert (run_dir / module["folder"] / "meta.json").is_file()
    report = (run_dir / "report.md").read_text()
    assert "| zero-shot |" in report and "after aquarium (sdpt)" in report


def test_same_config_and_seed_give_identical_results(smoke, tmp_path):
    again = run_smoke(tmp_path, name="again")[0] / "results.json"
    assert again.read_bytes() == (smoke[0] / "results.json").read_bytes()


def test_classification_stream_on_the_dual_encoder(smoke_classify):
    run_dir, results = smoke_classify
    assert results["host"] == "builtin:tiny-clip" and results["metric_names"] == {"base": "accuracy",
                                                                                  "aquarium": "accuracy"}
    assert all(0.0 <= v <= 1.0 for row in [results["zero_shot"], *results["matrix"]] for v in row)
    assert {"accuracy", "mean_class_accuracy"} <= set(results["metrics"]["rows"][1]["aquarium"])
    assert results["data"]["aquarium"]["shots"] == 2 and results["data"]["aquarium"]["train_size"] == 10
    assert [m["method"] for m in results["modules"]] == ["adapter", "coop"]
    assert "top-1 accuracy" in (run_dir / "report.md").read_text() and (run_dir / "plots" / "matrix.png").is_file()
    (first, unseen), last = results["matrix"]
    assert results["derived"]["mtil"] == pytest.approx({"transfer": unseen, "average": (first + unseen + sum(last)) / 4,
                                                        "last": sum(last) / 2})
    assert "| Transfer | Average | Last |" in (run_dir / "report.md").read_text()
    cache = json.loads((run_dir / "timing.json").read_text())["steps"]
    # the adapter acts in the image tower: only the text tower is cached while it trains; under `all` it
    # stays on while CoOp (text tower) trains, so then neither tower is a fixed function
    assert set(cache[0]["trunk_cache"]) == {"text"} and cache[0]["trunk_cache"]["text"]["hits"] > 0
    assert cache[1]["trunk_cache"] == {}


def test_feature_cache_changes_no_classification_result(smoke_classify, tmp_path):
    plain = run_smoke(tmp_path, "feature_cache=false", config=SMOKE_CLASSIFY)[0] / "results.json"
    assert plain.read_bytes() == (smoke_classify[0] / "results.json").read_bytes()


def test_one_training_evaluated_under_each_policy(tmp_path, monkeypatch):
    """`policies` runs the stream once per policy: each module trained once, each distinct evaluation made
    once (own and route here switch on nothing that `all` did not evaluate already)."""
    evaluated = []
    evaluate = loop.evaluate

    def counting(stack, task, *args, **kwargs):
        evaluated.append(task.name)
        return evaluate(stack, task, *args, **kwargs)

    monkeypatch.setattr(streams, "evaluate", counting)
    run_dir = engine.run(load_config(SMOKE, [f"run_dir={tmp_path / 'study'}", "policies=[all,own,route]"]),
                         progress=False)
    results = {p: json.loads((run_dir / f"smoke@policy={p}" / "results.json").read_text())
               for p in ("all", "own", "route")}
    assert [r["policy"] for r in results.values()] == ["all", "own", "route"]
    assert sorted(evaluated) == ["aquarium"] * 3 + ["base"] * 3  # zero-shot row, then two rows under `all`
    assert [m["reused_from"] for m in results["route"]["modules"]] == ["smoke@policy=all"] * 2
    rows = {p: r["metrics"]["rows"] for p, r in results.items()}
    # all: the later module acts on the old task
    assert rows["all"][0]["base"] != rows["all"][1]["base"]
    # own: the old task keeps every statistic, bit for bit
    assert rows["own"][0]["base"] == rows["own"][1]["base"] and results["own"]["derived"]["forgetting"]["base"] == 0.0
    # route: the old task kept; the aquarium's prompt names its own phrases: every module on, as under all
    assert results["route"]["derived"]["retention"]["base"] == 1.0 and rows["route"][1]["base"] == rows["route"][0]["base"]
    assert rows["route"][1]["aquarium"] == rows["all"][1]["aquarium"]
    assert rows["route"][0]["aquarium"] == results["route"]["metrics"]["zero_shot"]["aquarium"]  # the plain host
    compat = json.loads((run_dir / "compat.json").read_text())
    assert [(r["setting"], r["policy"]) for r in compat] == [(f"smoke@policy={p}", p) for p in ("all", "own", "route")]
    report = (run_dir / "report.md").read_text()
    assert "## Policies side by side" in report and "| smoke |" in report


def test_hash_check_fires_when_a_frozen_parameter_moves(tmp_path, monkeypatch):
    step = torch.optim.AdamW.step

    def step_and_tamper(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            next(host.model.parameters()).add_(1e-3)
        return out

    open_workspace = streams.Workspace.open

    def keep_host(*args, **kwargs):
        nonlocal host
        ws = open_workspace(*args, **kwargs)
        host = ws.host
        return ws

    host = None
    monkeypatch.setattr(streams.Workspace, "open", keep_host)
    monkeypatch.setattr(torch.optim.AdamW, "step", step_and_tamper)
    cfg = load_config(SMOKE, [f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(IntegrityError, match="host"):
        engine.run(cfg, progress=False)
    assert not (tmp_path / "run" / "modules" / "00-base-adapter").exists()


def test_study_trains_a_shared_first_step_once(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(SMOKE.read_text().split("stream:")[0] + """
settings:
  a+none: [{task: base, method: adapter}, {task: aquarium, method: none}]
  a+sdpt: [{task: base, method: adapter}, {task: aquarium, method: sdpt}]
""")
    run_dir = engine.run(load_config(study, [f"run_dir={tmp_path / 'study'}"]), progress=False)
    first = json.loads((run_dir / "a+none" / "results.json").read_text())
    second = json.loads((run_dir / "a+sdpt" / "results.json").read_text())
    assert second["modules"][0]["reused_from"] == "a+none"
    assert second["matrix"][0] == first["matrix"][0]
    assert first["matrix"][1][0] == first["matrix"][0][0]  # the zero-shot step trains nothing
    rows = json.loads((run_dir / "compat.json").read_text())
    assert [r["setting"] for r in rows] == ["a+none", "a+sdpt"]
    assert {"setting", "metric", "old_task", "new_task", "old_metric", "new_metric"} <= set(rows[0])
    assert rows[1]["new_metric"] == second["matrix"][1][1]
    assert (run_dir / "plots" / "retention_vs_new.png").is_file() and (run_dir / "report.md").is_file()

    # a study grows too: a setting appended runs alone; a finished step changed is refused by name
    written = {p: p.read_bytes() for p in run_dir.glob("a+*/results.json")}
    study.write_text(study.read_text()
                     + "  a+adapter: [{task: base, method: adapter}, {task: aquarium, method: adapter}]\n")
    with pytest.raises(RunError, match=r"settings.a\+sdpt.1 \(aquarium, sdpt\) has finished, and "
                                              r"settings.a\+sdpt.1.config.k changed"):
        engine.run(load_config(study, [f"run_dir={run_dir}", "settings.a+sdpt.1.config.k=2"]), resume=True)
    engine.run(load_config(study, [f"run_dir={run_dir}"]), resume=True, progress=False)
    third = json.loads((run_dir / "a+adapter" / "results.json").read_text())
    assert third["modules"][0]["reused_from"] == "a+none" and third["modules"][1]["reused_from"] is None
    assert {p: p.read_bytes() for p in written} == written
    settings = [r["setting"] for r in json.loads((run_dir / "compat.json").read_text())]
    assert settings == ["a+none", "a+sdpt", "a+adapter"]


def test_lr_sweep_trains_the_last_module_at_each_rate_and_plots_the_frontier(tmp_path):
    run_dir = tmp_path / "sweep"
    engine.run(load_config(SMOKE, [f"run_dir={run_dir}", "lr_sweep=[0.1,1]", "train.steps=2"]), progress=False)
    rows = json.loads((run_dir / "compat.json").read_text())  # SDPT's own rate 0.3, times 0.1 and 1
    assert [(r["setting"], r["swept"], r["lr"]) for r in rows] == [("smoke@lr=0.03", "smoke", 0.03),
                                                                  ("smoke@lr=0.3", "smoke", 0.3)]
    second = json.loads((run_dir / "smoke@lr=0.3" / "results.json").read_text())
    assert [m["train"]["lr"] for m in second["modules"]] == [0.003, 0.3]  # the first step at its own rate
    assert second["modules"][0]["reused_from"] == "smoke@lr=0.03"  # trained once for both
    report = (run_dir / "report.md").read_text()
    assert "## Retention-plasticity frontier" in report and "| smoke | 0.3 |" in report
    assert (run_dir / "plots" / "frontier.png").is_file()


def test_a_run_folder_whose_finished_steps_changed_is_refused_naming_the_step_and_key(smoke):
    run_dir = smoke[0]
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "run.log"}
    with pytest.raises(RunError, match="already holds a run"):
        engine.run(load_config(SMOKE, [f"run_dir={run_dir}"]), progress=False)
    with pytest.raises(RunError, match=r"stream.0 \(base, adapter\) has finished, and stream.0.train.steps "
                                              r"changed since: 4 then, 3 now"):
        engine.run(load_config(SMOKE, [f"run_dir={run_dir}", "train.steps=3"]), resume=True)
    with pytest.raises(RunError, match="stream.1 .* and stream.1.config.k changed since: 10 then, 3 now"):
        engine.run(load_config(SMOKE, [f"run_dir={run_dir}", "stream.1.config.k=3"]), resume=True)
    with pytest.raises(RunError,
                       match="tasks.aquarium.phrases.fish changed since: None then, 'goldfish' now"):
        engine.run(load_config(SMOKE, [f"run_dir={run_dir}", "tasks.aquarium.phrases={fish: goldfish}"]), resume=True)
    with pytest.raises(RunError, match="data.val_images changed since: 8 then, 4 now"):
        engine.run(load_config(SMOKE, [f"run_dir={run_dir}", "data.val_images=4"]), resume=True)
    shorter = run_dir.parent / "shorter.yaml"
    shorter.write_text(SMOKE.read_text().replace("  - {task: aquarium, method: sdpt}\n", ""))
    with pytest.raises(RunError, match=r"stream.1 \(aquarium, sdpt\) has finished, but the config's stream "
                                              r"has 1 step\(s\); a finished step cannot be taken out"):
        engine.run(load_config(shorter, [f"run_dir={run_dir}"]), resume=True)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "run.log"} == before


def test_step_sampler_restarts_mid_stream_on_the_same_batches():
    full = list(StepSampler(size=5, batch_size=3, steps=6, seed=1))
    assert len(full) == 18 and sorted(full[:5]) == list(range(5))  # whole permutations back to back
    assert list(StepSampler(size=5, batch_size=3, steps=6, seed=1, start=4)) == full[12:]


def test_ranks_share_every_global_batch_between_them():
    whole = list(StepSampler(size=7, batch_size=4, steps=5, seed=2, start=1))
    ranks = [list(StepSampler(size=7, batch_size=4, steps=5, seed=2, start=1, rank=r, world=2)) for r in (0, 1)]
    batches = [whole[i:i + 4] for i in range(0, len(whole), 4)]
    assert [b[:2] for b in batches] == [ranks[0][i:i + 2] for i in range(0, len(ranks[0]), 2)]
    assert [b[2:] for b in batches] == [ranks[1][i:i + 2] for i in range(0, len(ranks[1]), 2)]


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(streams.distributed, "world_size", lambda: 2)
    cfg = load_config(SMOKE, [f"run_dir={tmp_path / 'run'}", "train.batch_size=3"])
    with pytest.raises(RunError, match="batch_size 3 does not split evenly over 2 processes"):
        engine.run(cfg, progress=False)


def test_report_reads_results_written_before_task_kinds(smoke, tmp_path):
    results = json.loads((smoke[0] / "results.json").read_text())
    old = {k: v for k, v in results.items() if k not in ("metrics", "metric_names", "data")}
    old["coco"] = results["metrics"]
    old["derived"] = {**results["derived"]}
    old["derived"]["old_map"] = old["derived"].pop("old_metric")
    old["derived"]["new_map"] = old["derived"].pop("new_metric")
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(old))
    (upgraded,) = engine.rebuild_reports(folder).values()
    assert upgraded["metric_names"] == {"base": "mAP", "aquarium": "mAP"}
    assert upgraded["derived"]["new_metric"] == results["derived"]["new_metric"]
    report = (folder / "report.md").read_text()
    assert "COCO mAP@[.5:.95]" in report and f"{results['derived']['new_metric']:.3f}" in report


def test_bf16_smoke_stream_runs_near_fp32_with_fp32_weights(smoke, tmp_path):
    """precision=bf16 autocasts the forward (CPU autocast here, the CUDA path the same code); the trained
    module's weights stay fp32. Measured: per-step losses within 1.5% of fp32's on the smoke stream."""
    from safetensors.torch import load_file

    run_dir, results = run_smoke(tmp_path, "precision=bf16")
    fp32 = smoke[1]["losses"]
    for task, losses in results["losses"].items():
        assert all(abs(a - b) <= 0.05 * abs(b) for a, b in zip(losses, fp32[task])), (task, losses, fp32[task])
    for module in results["modules"]:
        assert {t.dtype for t in load_file(run_dir / module["folder"] / "adapter_model.safetensors").values()} \
            == {torch.float32}


def test_data_loading_workers_change_no_result(smoke, tmp_path):
    """Two worker processes decode and size the images: the same batches in the same order, bit for bit."""
    workers = run_smoke(tmp_path, "num_workers=2")[0] / "results.json"
    assert workers.read_bytes() == (smoke[0] / "results.json").read_bytes()
