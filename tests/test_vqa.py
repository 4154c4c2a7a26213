"""The VQA task kind: synthetic questions, the VQAv2 layout, ViLT's arrow shards, VQA accuracy, bad input."""
import json
from collections import Counter

import pyarrow as pa
import pytest
import torch
from PIL import Image

from evaluation.evaluators import VqaEvaluator
from tasks.errors import DataError
from tasks.task import load_task
from tasks.vqa import answer_credits, load_vqa
from tasks.worlds import WorldSizes, world_folder

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`


def test_synthetic_questions_are_deterministic_and_agree_with_the_scenes(tmp_path, small_sizes):
    first = world_folder("aquarium", sizes=small_sizes, cache_root=tmp_path / "a", layout="vqa")
    second = world_folder("aquarium", sizes=small_sizes, cache_root=tmp_path / "b", layout="vqa")
    for name in ("train_questions.json", "train_annotations.json", "val_questions.json", "answers.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    coco = json.loads((first / "annotations" / "instances_train.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    counts = Counter((a["image_id"], names[a["category_id"]]) for a in coco["annotations"])
    questions = json.loads((first / "train_questions.json").read_text())["questions"]
    annotations = {a["question_id"]: a for a in json.loads((first / "train_annotations.json").read_text())["annotations"]}
    checked = 0
    for q in questions:
        answer = annotations[q["question_id"]]["multiple_choice_answer"]
        if q["question"].startswith("how many "):
            name = q["question"][len("how many "):-len(" are there?")]
            assert answer == str(counts[(q["image_id"], name)])
            checked += 1
        if q["question"].startswith("is there a "):
            assert answer == ("yes" if counts[(q["image_id"], q["question"][len("is there a "):-1])] else "no")
            checked += 1
    assert checked > 0
    assert {a["question_type"] for a in annotations.values()} >= {"presence", "count", "which"}


def test_a_vqa_task_has_the_worlds_answers_and_one_answer_per_question(world_cache, small_sizes):
    task = load_task("synthetic:fruit", kind="vqa", sizes=small_sizes, cache_root=world_cache)
    assert task.metric == "vqa_accuracy" and task.phrases[:3] == ["yes", "no", "0"]
    assert task.phrases.count("orange") == 1  # a colour and a class: one answer
    assert {"apple", "banana", "grapes"} <= set(task.phrases)
    image, target = task.train[0]
    assert isinstance(target["question"], str) and target["answer_scores"].tolist() == [1.0]


def _vqav2_folder(root, answers_per_question):
    (root / "val2014").mkdir(parents=True)
    (root / "train2014").mkdir()
    for split in ("train", "val"):
        Image.new("RGB", (32, 32), "red").save(root / f"{split}2014" / f"COCO_{split}2014_000000000042.jpg")
        questions = [{"question_id": i, "image_id": 42, "question": f"question {i}?"}
                     for i in range(len(answers_per_question))]
        annotations = [{"question_id": i, "image_id": 42, "answers": [{"answer": a} for a in given]}
                       for i, given in enumerate(answers_per_question)]
        (root / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


def test_vqav2_layout_and_vqa_accuracy(tmp_path):
    ten = ["two"] * 2 + ["2"] * 7 + ["three"]
    root = _vqav2_folder(tmp_path / "vqa", [ten, ["Yes"] * 10, ["red"]])
    train, val = load_vqa(root)
    assert train.answers[0] in ("yes", "2")  # by frequency
    credits = [dict(zip(val.target(i)["answer_ids"].tolist(), val.target(i)["answer_scores"].tolist()))
               for i in range(3)]
    index = {a: i for i, a in enumerate(val.answers)}
    assert credits[0] == pytest.approx({index["two"]: 2 / 3, index["2"]: 1.0, index["three"]: 1 / 3})
    assert credits[1] == {index["yes"]: 1.0} and credits[2] == {index["red"]: 1.0}  # one annotator: exact match
    evaluator = VqaEvaluator()
    scores = torch.zeros(len(val.answers))
    picks = [index["two"], index["three"], index["red"]]  # credits 2/3, 0 (all said yes), 1
    evaluator.process([val.target(i) for i in range(3)],
                      [{"scores": scores.index_fill(0, torch.tensor([p]), 1.0)} for p in picks])
    result = evaluator.evaluate()
    assert result["vqa_accuracy"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert result["exact_match"] == pytest.approx(1 / 3)  # only "red" is its question's top answer
    assert answer_credits(["a", "a", "a", "a", "b"]) == {"a": 1.0, "b": 1 / 3}


def test_vilt_arrow_shards(tmp_path):
    root = tmp_path / "arrow"
    root.mkdir()
    import io
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "blue").save(buffer, format="PNG")
    for split in ("train", "val"):
        table = pa.table({"image": [buffer.getvalue()], "questions": [["what colour?", "how many?"]],
                          "answers": [[["blue", "green"], ["2"]]], "answer_scores": [[[0.9, 0.3], [1.0]]],
                          "image_id": [7], "question_id": [[70, 71]], "split": [split]})
        with pa.OSFile(str(root / f"vqav2_{split}.arrow"), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    train, val = load_vqa(root)
    assert len(val) == 2 and val.open_image(1).size == (16, 16)
    target = val.target(0)
    credit = dict(zip((val.answers[i] for i in target["answer_ids"].tolist()), target["answer_scores"].tolist()))
    assert credit == pytest.approx({"blue": 1.0, "green": 1 / 3})  # 0.9 = three annotators, 0.3 = one
    assert val.target(1)["question_id"] == 71 and val.target(1)["question"] == "how many?"


@pytest.mark.parametrize("fault, message", [
    ("no_annotations", "has no annotations file beside it"),
    ("bad_json", "not valid JSON"),
    ("missing_image", "names image_id 43, which has no image file"),
    ("no_answers", r"annotations\[0\] needs question_id and a non-empty list answers"),
    ("unanswered", "no answers for question_id 0"),
    ("twice", r"answers.json: answer\(s\) \['yes'\] listed more than once"),
])
def test_bad_vqav2_input_names_the_file_and_fault(tmp_path, fault, message):
    root = _vqav2_folder(tmp_path / "vqa", [["yes"]])
    questions = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    annotations = root / "v2_mscoco_val2014_annotations.json"
    if fault == "no_annotations":
        annotations.unlink()
    elif fault == "bad_json":
        questions.write_text("{not json")
    elif fault == "missing_image":
        questions.write_text(json.dumps({"questions": [{"question_id": 0, "image_id": 43, "question": "q?"}]}))
    elif fault == "no_answers":
        annotations.write_text(json.dumps({"annotations": [{"question_id": 0, "answers": []}]}))
    elif fault == "unanswered":
        annotations.write_text(json.dumps({"annotations": [{"question_id": 5, "answers": [{"answer": "no"}]}]}))
    else:
        (root / "answers.json").write_text(json.dumps(["yes", "no", "Yes"]))
    with pytest.raises(DataError, match=message):
        load_vqa(root)


def test_an_answer_outside_the_heads_vocabulary_is_refused_by_name(tiny_vilt_host):
    with pytest.raises(DataError, match=r"answer\(s\) \['unicorn'\] \(1 in all\) are not in the VQA head's vocabulary"):
        tiny_vilt_host.check_phrases(["yes", "unicorn"])


def test_a_world_with_sizes_is_cached_per_layout(world_cache):
    sizes = WorldSizes(train=4, val=2)
    assert world_folder("space", sizes=sizes, cache_root=world_cache, layout="vqa").name.endswith("-vqa")
