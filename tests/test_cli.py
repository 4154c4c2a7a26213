"""The command line, as users and outside checks call it: in process (``main([...])``), and once
through the real console script."""
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from continual.cli import main

CONTINUAL = str(Path(sys.executable).parent / "continual")
SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def _run(capsys, monkeypatch, world_cache):
    """``continual ARGS`` in this process: exit status, stdout and stderr, as a subprocess would give them."""
    monkeypatch.setenv("CONTINUAL_CACHE", str(world_cache))

    def run(*args):
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit:  # argparse: --help, usage errors
            code = exit.code or 0
        out = capsys.readouterr()
        return Result(code, out.out, out.err)
    return run


def test_console_script_answers_help_without_loading_torch():
    out = subprocess.run([CONTINUAL, "run", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: continual run" in out.stdout


def test_only_run_is_shared_between_processes_under_torchrun(_run, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = _run("fewshot", "configs/fewshot.yaml")
    assert out.returncode == 2 and "only `continual run`" in out.stderr


def test_hosts_json_contract(_run):
    out = _run("hosts", "--json")
    assert out.returncode == 0, out.stderr
    hosts = {h["name"]: h for h in json.loads(out.stdout)}
    assert hosts["builtin:tiny-base"]["kind"] == "grounding-dino" and "fusion" in hosts["builtin:tiny-base"]["site_kinds"]
    assert hosts["builtin:tiny-clip"]["kind"] == "dual-encoder"
    assert hosts["builtin:tiny-clip"]["task_kinds"] == ["classification"]
    assert all({"name", "kind", "task_kinds", "site_kinds"} <= set(h) for h in hosts.values())


def test_eval_classification_json_contract_on_tiny_clip(_run):
    out = _run("eval", "--checkpoint", "builtin:tiny-clip", "--task", "synthetic:base", "--kind", "classification",
               "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout)
    assert metrics["accuracy"] >= 0.7, "the shipped tiny-clip must reach zero-shot top-1 0.7 on the base world"
    assert {"accuracy", "mean_class_accuracy"} <= set(metrics)


def test_a_bad_value_in_a_later_step_writes_nothing(_run, tmp_path):
    out = _run("run", SMOKE, f"run_dir={tmp_path / 'd'}", "stream.1.config.text_prompt_mask=half")
    assert out.returncode == 2 and "stream.1.config: sdpt: text_prompt_mask must be one of" in out.stderr
    assert not (tmp_path / "d").exists()


def test_eval_json_contract_on_the_shipped_checkpoint(_run):
    out = _run("eval", "--checkpoint", "builtin:tiny-base", "--task", "synthetic:base", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout)
    assert {"mAP", "AP50", "AP75", "AR100"} <= set(metrics)
    assert metrics["mAP"] >= 0.35, "the shipped checkpoint must reach base-world val mAP 0.35"


def test_list_tasks_names_the_aquarium_world(_run):
    out = _run("eval", "--list-tasks")
    assert out.returncode == 0 and "synthetic:aquarium" in out.stdout.split()


def test_methods_json_contract(_run):
    out = _run("methods", "--checkpoint", "builtin:tiny-base", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {row["method"]: row for row in json.loads(out.stdout)}
    assert {"sdpt", "adapter", "vpt", "lora", "bitfit", "coop", "dpt", "linear_probe", "full_ft"} <= set(rows)
    for row in rows.values():
        assert row["fraction"] == pytest.approx(row["trainable_params"] / row["total_params"])
    assert rows["sdpt"]["trainable_params"] == 10 * 128 * 2  # k * E * fusion layers at the default k
    assert rows["full_ft"]["fraction"] == 1.0
    assert rows["dpt"]["trainable_params"] > 0  # DPT's Grounding DINO port


def test_methods_json_contract_on_tiny_clip(_run):
    out = _run("methods", "--checkpoint", "builtin:tiny-clip", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {row["method"]: row for row in json.loads(out.stdout)}
    assert all(rows[m]["trainable_params"] > 0 for m in ("dpt", "coop", "vpt"))
    assert "sdpt" not in rows  # no fusion layers on a dual encoder


def test_methods_and_eval_json_contracts_on_tiny_vilt(_run):
    out = _run("methods", "--checkpoint", "builtin:tiny-vilt", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {row["method"]: row for row in json.loads(out.stdout)}
    assert rows["apt"]["trainable_params"] > 0 and rows["deep_prompt"]["trainable_params"] > 0
    assert {"adapter", "lora", "bitfit", "linear_probe", "full_ft"} <= set(rows) and "sdpt" not in rows
    out = _run("eval", "--checkpoint", "builtin:tiny-vilt", "--task", "synthetic:base", "--kind", "vqa", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout)
    assert metrics["questions"] == 300 and 0.4 < metrics["vqa_accuracy"] <= 1  # what pretrain.json records


def test_bad_input_is_one_line_error_not_a_traceback(_run, tmp_path):
    out = _run("eval", "--checkpoint", "builtin:tiny-base", "--task", str(tmp_path / "nowhere"))
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr


TINY_PRETRAIN = ["stages.words.train.steps=3", "stages.words.train_images=16", "stages.word-scenes.train.steps=2",
                 "stages.word-scenes.train_images=16", "val_images=8", "eval_every=0", "report_images=8"]


def test_pretrain_writes_its_record_resumes_bit_for_bit_and_goes_on_from_a_checkpoint(_run, tmp_path, monkeypatch):
    """The grounding recipe's words stages, a few steps each (prompts drawn per step: tests/test_worlds.py); the
    same run cut at its third validation (the first of stage word-scenes) and resumed; a stage run again from the
    checkpoint."""
    from continual import faults
    from continual.hosts.grounding_dino import GroundingDinoHost

    recipe, settings = ["pretrain", "--recipe", "grounding"], [*TINY_PRETRAIN, "eval_every=2"]
    args = [*recipe, "--stage", "words", "--stage", "word-scenes", *settings]
    whole = _run(*args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    record = json.loads((tmp_path / "whole" / "pretrain.json").read_text())
    assert [(s["name"], s["world"], s["train"]["steps"], s["negatives"], [h["step"] for h in s["history"]])
            for s in record["stages"]] == [("words", "grounding", 3, 6, [2, 3]),
                                           ("word-scenes", "grounding-scenes", 2, 6, [2])]
    assert record["started_from"] is None and "mAP" in record["base_val"]
    assert set(record["zero_shot"]) == {"synthetic:aquarium", "synthetic:fruit", "synthetic:vehicles",
                                        "synthetic:signs", "synthetic:space"}
    assert GroundingDinoHost.from_pretrained(tmp_path / "whole").model.config.phrase_pooling  # stage words set it
    # each validation saved the host beside the checkpoint, the last one as it was saved
    snapshot = tmp_path / "whole-snapshots" / "word-scenes-2" / "model.safetensors"
    assert snapshot.read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()

    monkeypatch.setenv("CONTINUAL_CRASH_AT", "pretrain-validation:3")
    monkeypatch.setenv("CONTINUAL_CRASH_MODE", "raise")
    faults.reset()
    with pytest.raises(faults.SimulatedCrash):
        _run(*args, "--out", tmp_path / "cut")
    monkeypatch.delenv("CONTINUAL_CRASH_AT")
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut-snapshots" / "word-scenes-2").is_dir()
    resumed = _run(*args, "--out", tmp_path / "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ((tmp_path / "cut" / "model.safetensors").read_bytes()
            == (tmp_path / "whole" / "model.safetensors").read_bytes())

    def curves(folder):
        saved = json.loads((folder / "pretrain.json").read_text())
        return [[(h["step"], h["loss"], h["mAP"]) for h in s["history"]] for s in saved["stages"]], saved["base_val"]
    assert curves(tmp_path / "cut") == curves(tmp_path / "whole")
    refused = _run(*args, "stages.words.train.lr=0.001", "--out", tmp_path / "cut", "--resume")
    assert refused.returncode == 2 and "saved by a run with other settings" in refused.stderr, refused.stderr

    again = _run(*recipe, "--stage", "word-scenes", *settings, "--out", tmp_path / "again", "--from", tmp_path / "whole")
    assert again.returncode == 0, again.stderr[-2000:]
    record = json.loads((tmp_path / "again" / "pretrain.json").read_text())
    assert [s["name"] for s in record["stages"]] == ["words", "word-scenes", "word-scenes"]  # earlier records kept
    assert record["started_from"] == str(tmp_path / "whole")
    evaluated = _run("eval", "--checkpoint", tmp_path / "again", "--task", "synthetic:space", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (["--stage", "scenery"], "unknown stage(s) ['scenery']; stages are shapes, scenes"),
    (["stages.scenes.trian.steps=3"], "unknown config key 'stages.scenes.trian'; did you mean 'train'?"),
])
def test_pretrain_refuses_unknown_stages_and_keys(_run, tmp_path, args, message):
    out = _run("pretrain", "--out", str(tmp_path / "ckpt"), *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert not (tmp_path / "ckpt").exists()


def test_run_smoke_config_over_seeds_then_report_and_compare(_run, tmp_path):
    run_dir = tmp_path / "smoke"
    # --resume into a missing folder; policy route: the old task kept whatever the seed
    out = _run("run", SMOKE, f"run_dir={run_dir}", "seeds=[0,1]", "policy=route", "--resume")
    assert out.returncode == 0, out.stderr[-2000:]
    per_seed = [json.loads((run_dir / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
    assert all(len(r["matrix"]) == 2 for r in per_seed) and per_seed[0]["losses"] != per_seed[1]["losses"]
    assert per_seed[0]["metrics"]["zero_shot"] == per_seed[1]["metrics"]["zero_shot"]  # the same data
    derived = json.loads((run_dir / "summary.json").read_text())["streams"]["smoke"]["derived"]
    for key in ("final_average", "bwt", "fwt", "old_metric", "new_metric", "hap"):
        values = [r["derived"][key] for r in per_seed]
        assert derived[key]["values"] == values and derived[key]["mean"] == pytest.approx(sum(values) / 2)
        half = 12.7062047 * statistics.stdev(values) / 2 ** 0.5  # t(0.975, 1 degree of freedom)
        assert derived[key]["interval"] == pytest.approx(half, rel=1e-6)
    assert derived["retention"]["base"]["values"] == [r["derived"]["retention"]["base"] for r in per_seed]
    assert all(r["policy"] == "route" and r["derived"]["retention"]["base"] >= 0.99 for r in per_seed)
    assert "report:" in out.stdout and "| final_average |" in out.stdout and " ± " in out.stdout
    (run_dir / "report.md").unlink()
    (run_dir / "seed-1" / "report.md").unlink()
    assert _run("report", str(run_dir)).returncode == 0
    assert (run_dir / "report.md").is_file() and (run_dir / "seed-1" / "report.md").is_file()
    compare = _run("compare", str(run_dir), str(run_dir / "seed-0"))
    assert compare.returncode == 0 and compare.stdout.count(" ± ") >= 6 and "seed-0" in compare.stdout


@pytest.mark.parametrize("override, expected", [
    ("trian.steps=3", "unknown config key 'trian'; did you mean 'train'"),
    ("train.stpes=3", "unknown config key 'train.stpes'; did you mean 'steps'"),
    ("policy=sometimes", "policy must be one of"),
])
def test_run_refuses_bad_keys_before_loading_anything(_run, tmp_path, override, expected):
    out = _run("run", SMOKE, f"run_dir={tmp_path / 'x'}", override)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and expected in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["run", "report", "compare", "train", "eval", "methods", "hosts", "pretrain", "fewshot"])
def test_help(_run, command):
    out = _run(command, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout


def test_train_one_module_on_top_of_another(_run, tmp_path):
    first = _run("train", "--method", "bitfit", "--task", "synthetic:base", "--steps", "2", "--out",
                 str(tmp_path / "first"), "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    module = json.loads(first.stdout)["module"]
    second = _run("train", "--method", "sdpt", "--task", "synthetic:aquarium", "--steps", "2", "--on-top", module,
                  "--out", str(tmp_path / "second"), "--json")
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout)
    assert {"before", "after", "train_seconds", "final_loss", "module"} <= set(summary)
    assert (Path(summary["module"]) / "meta.json").is_file()


FEWSHOT = """
name: fs
host: builtin:tiny-clip
shots: [1, 2]
seeds: [0, 1]
data: {train_images: 10, val_images: 10, image_size: 64}
train: {steps: 2, batch_size: 4, warmup: 1}
tasks:
  fruit: {data: "synthetic:fruit", kind: classification}
methods:
  zero-shot: {method: none}
  coop: {method: coop, config: {tokens: 2}}
  dpt: {method: dpt, config: {text_tokens: 2, visual_tokens: 2}}
"""


def test_fewshot_grid_writes_cells_table_and_plot_resumes_and_grows(_run, tmp_path):
    config = tmp_path / "fs.yaml"
    config.write_text(FEWSHOT)
    run_dir = tmp_path / "run"
    out = _run("fewshot", config, f"run_dir={run_dir}")
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((run_dir / "fewshot.json").read_text())
    cells = results["cells"]
    assert len(cells) == 2 * 2 * 3 and {c["train_items"] for c in cells} == {5, 10}  # 5 classes x K shots
    assert len({json.dumps(c["metrics"]) for c in cells if c["method"] == "zero-shot"}) == 1
    report = (run_dir / "report.md").read_text()
    assert "| dpt |" in report and " ± " in report and (run_dir / "fewshot.png").stat().st_size > 1000
    trained = [c for c in cells if c["method"] != "zero-shot"]
    assert all(len(c["losses"]) == 2 and c["losses"][-1] == pytest.approx(c["final_loss"], abs=1e-5) for c in trained)
    assert "## Training loss" in report and (run_dir / "curves.png").stat().st_size > 1000
    # a grid killed after 9 cells continues with the 3 missing ones, the others kept as they were
    (run_dir / "fewshot.json").write_text(json.dumps({**results, "cells": cells[:9]}))
    again = _run("fewshot", config, f"run_dir={run_dir}", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((run_dir / "fewshot.json").read_text())["cells"]
    assert resumed[:9] == cells[:9] and len(resumed) == 12
    # a config that adds a method resumes with only its cells; one that changes a method is refused
    config.write_text(FEWSHOT + "  vpt: {method: vpt, config: {tokens: 2}}\n")
    grown = _run("fewshot", config, f"run_dir={run_dir}", "--resume")
    assert grown.returncode == 0, grown.stderr[-2000:]
    cells_after = json.loads((run_dir / "fewshot.json").read_text())["cells"]
    assert cells_after[:12] == resumed and [c["method"] for c in cells_after[12:]] == ["vpt"] * 4
    assert "| vpt |" in (run_dir / "report.md").read_text()
    config.write_text(FEWSHOT.replace("coop, config: {tokens: 2}", "coop, config: {tokens: 3}"))
    changed = _run("fewshot", config, f"run_dir={run_dir}", "--resume")
    assert changed.returncode == 2 and "holds a grid of another config" in changed.stderr, changed.stderr


@pytest.mark.parametrize("override, expected", [
    ("methods.dpt.method=dtp", "methods.dpt.method: unknown method 'dtp'; did you mean 'dpt'?"),
    ("methods.dpt.config.alpha=-1", "dpt: alpha must be a number >= 0, got -1"),
    ("tasks.fruit.kind=vqa", "shots: K images per class needs classification tasks; tasks.fruit is 'vqa'"),
    ("shots=[0]", "shots must be a non-empty list of distinct positive counts or null"),
    ("seedz=[1]", "unknown config key 'seedz'; did you mean 'seeds'?"),
])
def test_fewshot_refuses_bad_configs_before_loading_anything(_run, tmp_path, override, expected):
    config = tmp_path / "fs.yaml"
    config.write_text(FEWSHOT)
    out = _run("fewshot", config, f"run_dir={tmp_path / 'x'}", override)
    assert out.returncode == 2 and expected in out.stderr, out.stderr
    assert not (tmp_path / "x").exists()


def test_a_fewshot_grid_mixing_task_kinds_is_refused(tmp_path):
    from continual.config import ConfigError
    from continual.fewshot import load_fewshot_config

    config = tmp_path / "fs.yaml"
    config.write_text(FEWSHOT.replace("shots: [1, 2]", "shots: [null]").replace(
        "kind: classification}", 'kind: classification}\n  q: {data: "synthetic:space", kind: vqa}'))
    with pytest.raises(ConfigError, match="one table needs one metric, so one task kind"):
        load_fewshot_config(config)


@pytest.mark.fast
def test_overrides_may_follow_the_flags():
    from continual.cli import parse

    args = parse(["run", SMOKE, "--resume", "run_dir=x", "train.steps=2"])
    assert args.resume and args.overrides == ["run_dir=x", "train.steps=2"]
    with pytest.raises(SystemExit):
        parse(["run", SMOKE, "--resume", "--nonsense"])


@pytest.mark.fast
def test_every_subcommand_has_a_description_and_shows_its_defaults(capsys):
    from continual.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, command in commands.items():
        assert command.description, name
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "(default: 300)" in capsys.readouterr().out


@pytest.mark.fast
def test_warmup_longer_than_the_steps_is_warned_once(caplog):
    from continual.config import load_config

    with caplog.at_level("WARNING"):
        load_config(SMOKE, ["train.warmup=9", "train.steps=5"])
    assert [r.message for r in caplog.records if "warmup" in r.message] == [
        f"{SMOKE}: train.warmup 9 is not below train.steps 5: the learning rate never reaches its peak (set "
        "train.warmup lower)"]


@pytest.mark.fast
def test_a_users_tasks_py_shadowing_the_package_fails_at_import_naming_it(tmp_path):
    (tmp_path / "tasks.py").write_text("x = 1\n")
    out = subprocess.run([sys.executable, "-c", "import continual"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode != 0
    assert f"`import tasks` finds {tmp_path / 'tasks.py'}" in out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("case", ["config", "data", "host", "store", "run folder", "results"])
def test_each_kind_of_refusal_is_one_line_and_exit_2(_run, tmp_path, case):
    """A representative of each area of docs/bad-input.md (the non-finite loss: tests/test_reliability.py)."""
    (tmp_path / "empty-module").mkdir()
    args, message = {
        "config": (["run", SMOKE, "polcy=all"], "unknown config key 'polcy'"),
        "data": (["eval", "--task", tmp_path / "nowhere"], "nor a dataset folder"),
        "host": (["eval", "--checkpoint", "builtin:nope", "--task", "synthetic:base"], "unknown built-in host"),
        "store": (["run", SMOKE, f"run_dir={tmp_path / 'r'}", f"start_from=[{tmp_path / 'empty-module'}]"],
                  "empty-module: no adapter_config.json"),
        "run folder": (["run", SMOKE, f"run_dir={tmp_path / 'held'}"], "already holds a run"),
        "results": (["compare", tmp_path], "not a finished run"),
    }[case]
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "config.yaml").write_text("name: earlier\n")
    out = _run(*args)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert message in out.stderr
