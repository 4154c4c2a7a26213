"""Real exports: isolated bad annotations skipped and named (refused when strict), Roboflow's supercategory
left out of the prompt, and the ODinW-13 protocol on a stand-in tree of Roboflow-layout folders."""
import json
import logging
from pathlib import Path

import pytest
from conftest import ODINW_FOLDERS, write_roboflow_export

from continual import engine
from continual.cli import main
from continual.config import load_config
from tasks.task import load_task

ODINW13 = Path(__file__).resolve().parents[1] / "configs" / "odinw13.yaml"


@pytest.fixture(scope="module")
def export(tmp_path_factory, world_cache):
    """An aquarium export in Roboflow's layout whose only fault is one training box of width 0."""
    return write_roboflow_export("aquarium", tmp_path_factory.mktemp("export") / "aquarium", world_cache,
                                 zero_width_box=True)


def test_eval_skips_one_zero_width_box_naming_it_and_strict_refuses_it(export, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="continual"):
        assert main(["eval", "--task", f"coco:{export}", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0 <= metrics["mAP"] <= 1 and "AP50" in metrics
    (warning,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert str(export / "train" / "_annotations.coco.json") in warning
    assert "skipped 1 annotation(s) (1 box with width or height <= 0)" in warning
    assert "first: annotation 1: bbox [" in warning and "] has width or height <= 0" in warning
    assert main(["eval", "--task", f"coco:{export}", "--json", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "_annotations.coco.json: annotation 1: bbox" in err and "data.strict is on" in err


def test_eval_needs_the_evaluated_split_alone(tmp_path, world_cache, capsys, caplog):
    valid_only = write_roboflow_export("fruit", tmp_path / "fruit", world_cache, splits=("valid",),
                                       zero_width_box=True)
    with caplog.at_level(logging.WARNING, logger="continual"):
        assert main(["eval", "--task", str(valid_only), "--json"]) == 0
    assert "mAP" in json.loads(capsys.readouterr().out)
    assert any(str(valid_only / "valid") in r.getMessage() and "skipped 1" in r.getMessage() for r in caplog.records)


def test_the_supercategory_is_left_out_of_the_prompt_unless_kept(export, world_cache):
    task = load_task(str(export))
    assert "aquarium-things" not in task.phrases and "fish" in task.phrases
    assert task.record["left_out_categories"] == ["aquarium-things"]
    assert task.record["skipped_annotations"]["train"]["counts"] == {"empty_box": 1}
    assert any("left out of the prompt" in note for note in task.data_notes())
    assert [c["name"] for c in task.val.coco["categories"]] == task.phrases  # the evaluator's classes too
    kept = load_task(str(export), keep_supercategories=True)
    assert kept.phrases == ["aquarium-things", *task.phrases] and "left_out_categories" not in kept.record


def test_odinw13_protocol_on_a_stand_in_tree(odinw_standin, tmp_path, monkeypatch):
    for key, value in odinw_standin.items():
        monkeypatch.setenv(key, value)
    cfg = load_config(ODINW13, [f"run_dir={tmp_path / 'odinw'}", "host=builtin:tiny-base", "train.steps=1",
                                "train.batch_size=2", "train.warmup=0"])
    assert [cfg.tasks[s.task].data.split("/odinw/")[1] for s in cfg.stream] == list(ODINW_FOLDERS)
    results = json.loads((engine.run(cfg, progress=False) / "results.json").read_text())
    assert len(results["tasks"]) == 13 and list(results["held_out"]) == ["coco"]
    d, coco = results["derived"], results["held_out"]["coco"]
    assert d["final_average"] == pytest.approx(sum(results["matrix"][-1]) / 13)
    average, kept = d["final_average"], coco["final"]
    assert d["held_out_hap"]["coco"] == pytest.approx(2 * average * kept / (average + kept))
    assert results["data"]["aquarium"]["skipped_annotations"]["train"]["counts"] == {"empty_box": 1}
    assert results["data"]["egohands"]["val_size"] == 2 and "train_size" in results["data"]["egohands"]
    assert results["data"]["coco"]["train_size"] == 0  # held out: its val split alone is read
    assert all(results["data"][t]["left_out_categories"] for t in results["tasks"])
    report = (tmp_path / "odinw" / "report.md").read_text()
    assert "hAP with the final average" in report and "1 annotation(s) skipped (1 empty box)" in report
    assert "left out of the prompt" in report
    assert "skipped 1 annotation(s)" in (tmp_path / "odinw" / "run.log").read_text()
