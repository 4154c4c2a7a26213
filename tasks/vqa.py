"""VQA data: the VQAv2 layout and ViLT's arrow shards, checked on load, with an answer vocabulary per task.

Layouts of a task folder (``val`` may be called ``valid``):
- VQAv2: per split, ``*{split}*questions*.json`` (``{"questions": [{question_id,
  image_id, question}]}``) and ``*{split}*annotations*.json`` (``{"annotations":
  [{question_id, answers: [{answer}, ...]}]}``); images in ``{split}2014/``,
  ``{split}/`` or ``images/{split}/``, found by the image id their file name
  ends with (``COCO_val2014_000000000042.jpg``, ``000042.png``);
- arrow shards as ViLT's ``write_vqa.py`` writes them: ``*{split}*.arrow``,
  one row per image with columns ``image`` (encoded bytes), ``questions``,
  ``answers`` and ``answer_scores`` (lists per question), ``question_id``.

Answer vocabulary: ``answers.json`` (a JSON list) beside the data, else every
answer of the training split, most frequent first. Each question keeps a
credit per answer, VQA accuracy as VQAv2 defines it: min(#annotators who gave
it / 3, 1); with fewer than three annotators the divisor is their number (one
answer per question: exact match). ViLT's shards keep 0.3 per annotator
(capped at 1), read back as counts. Answers are compared lower-cased and
stripped; outside the vocabulary they earn no credit when predicted (none can
be), as in VQAv2 training.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from tasks.classification import IMAGE_SUFFIXES, SPLIT_NAMES, decode_image, read_shard
from tasks.errors import DataError

ANSWERS_FILE = "answers.json"
SHARD_COLUMNS = ("image", "questions", "answers", "answer_scores")


def normalize_answer(answer: str) -> str:
    return " ".join(str(answer).lower().split())


def answer_credits(answers: list[str]) -> dict[str, float]:
    """VQA accuracy credit of each answer the annotators gave: min(count / min(3, annotators), 1)."""
    counts = Counter(normalize_answer(a) for a in answers)
    divisor = min(3, len(answers))
    return {a: min(c / divisor, 1.0) for a, c in counts.items()}


@dataclass(frozen=True)
class Question:
    question_id: int
    image_id: int
    text: str
    credits: dict  # answer -> VQA accuracy credit
    path: Path | None = None  # the image: a file, or a row of an arrow shard
    shard: Path | None = None
    row: int = -1

    def describe(self) -> str:
        return str(self.path) if self.path is not None else f"{self.shard} row {self.row}"


class VqaData(torch.utils.data.Dataset):
    """Questions of one split; items are (PIL image, target) with target ``image_id``, ``question_id``,
    ``question`` (text), ``answer_ids`` (vocabulary indices of its answers) and ``answer_scores`` (credits)."""

    def __init__(self, questions: list[Question], answers: list[str], source: Path):
        self.questions = questions
        self.answers = list(answers)
        self.source = Path(source)
        self._index = {a: i for i, a in enumerate(self.answers)}
        self._tables: dict[Path, object] = {}

    def __len__(self) -> int:
        return len(self.questions)

    def open_image(self, index: int) -> Image.Image:
        q = self.questions[index]
        if q.path is not None:
            return decode_image(q.describe(), path=q.path)
        if q.shard not in self._tables:
            self._tables[q.shard] = read_shard(q.shard, SHARD_COLUMNS)
        return decode_image(q.describe(), data=self._tables[q.shard].column("image")[q.row].as_py())

    def target(self, index: int) -> dict:
        q = self.questions[index]
        known = [(self._index[a], c) for a, c in q.credits.items() if a in self._index]
        return {"image_id": q.image_id, "question_id": q.question_id, "question": q.text,
                "answer_ids": torch.tensor([i for i, _ in known], dtype=torch.long),
                "answer_scores": torch.tensor([c for _, c in known], dtype=torch.float32)}

    def __getitem__(self, index: int):
        return self.open_image(index), self.target(index)


def _read_json(path: Path, key: str) -> list:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: expected a JSON object with a list {key!r}")
    return data[key]


def _one_file(root: Path, split: str, what: str) -> Path | None:
    found = sorted({p for name in SPLIT_NAMES[split] for p in root.glob(f"*{name}*{what}*.json")})
    if len(found) > 1:
        raise DataError(f"{root}: several {split} {what} files ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _image_index(root: Path, split: str) -> dict[int, Path]:
    """Image id -> file, for the split's image folder (the id is the last digits of the file name)."""
    for name in SPLIT_NAMES[split]:
        for folder in (root / f"{name}2014", root / name, root / "images" / name):
            if folder.is_dir():
                index = {}
                for path in folder.iterdir():
                    digits = re.search(r"(\d+)$", path.stem)
                    if path.suffix.lower() in IMAGE_SUFFIXES and digits:
                        index[int(digits.group(1))] = path
                return index
    raise DataError(f"{root}: no image folder for the {split!r} split; looked for "
                    + ", ".join(f"{n}2014/, {n}/, images/{n}/" for n in SPLIT_NAMES[split]))


def _load_vqav2(root: Path, split: str, questions_file: Path) -> list[Question]:
    annotations_file = _one_file(root, split, "annotations")
    if annotations_file is None:
        raise DataError(f"{root}: {questions_file.name} has no annotations file beside it "
                        f"(*{split}*annotations*.json)")
    images = _image_index(root, split)
    answers_of = {}
    for n, ann in enumerate(_read_json(annotations_file, "annotations")):
        given = ann.get("answers") if isinstance(ann, dict) else None
        if "question_id" not in ann or not isinstance(given, list) or not given \
                or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in given):
            raise DataError(f"{annotations_file}: annotations[{n}] needs question_id and a non-empty list "
                            f"answers of {{\"answer\": TEXT}}")
        answers_of[ann["question_id"]] = [a["answer"] for a in given]
    out = []
    for n, q in enumerate(_read_json(questions_file, "questions")):
        missing = [k for k in ("question_id", "image_id", "question") if not isinstance(q, dict) or k not in q]
        if missing:
            raise DataError(f"{questions_file}: questions[{n}] lacks key(s) {', '.join(missing)}")
        if q["question_id"] not in answers_of:
            raise DataError(f"{annotations_file}: no answers for question_id {q['question_id']} "
                            f"(questions[{n}] of {questions_file.name})")
        if q["image_id"] not in images:
            raise DataError(f"{questions_file}: questions[{n}] names image_id {q['image_id']}, which has no "
                            f"image file in the {split} image folder")
        out.append(Question(q["question_id"], q["image_id"], str(q["question"]),
                            answer_credits(answers_of[q["question_id"]]), path=images[q["image_id"]]))
    return out


def _load_shards(shards: list[Path]) -> list[Question]:
    out = []
    for shard in shards:
        table = read_shard(shard, SHARD_COLUMNS)
        columns = {c: table.column(c).to_pylist() for c in ("questions", "answers", "answer_scores")}
        ids = table.column("question_id").to_pylist() if "question_id" in table.column_names else None
        image_ids = table.column("image_id").to_pylist() if "image_id" in table.column_names else None
        for row in range(table.num_rows):
            texts, answers, scores = (columns[c][row] for c in ("questions", "answers", "answer_scores"))
            if not (len(texts) == len(answers) == len(scores)):
                raise DataError(f"{shard} row {row}: {len(texts)} questions but {len(answers)} answer lists and "
                                f"{len(scores)} score lists")
            for k, (text, given, credit) in enumerate(zip(texts, answers, scores)):
                if len(given) != len(credit):
                    raise DataError(f"{shard} row {row} question {k}: {len(given)} answers but {len(credit)} scores")
                # ViLT's scores are 0.3 per annotator, capped at 1: back to counts, then VQAv2's credit
                credits = {normalize_answer(a): min(round(s / 0.3) / 3, 1.0) for a, s in zip(given, credit)}
                qid = ids[row][k] if ids else len(out)
                out.append(Question(int(qid), int(image_ids[row]) if image_ids else row, str(text), credits,
                                    shard=shard, row=row))
    if not out:
        raise DataError(f"the shards {[s.name for s in shards]} hold no questions")
    return out


def load_questions(root: Path, split: str) -> list[Question]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    questions_file = _one_file(root, split, "questions")
    if questions_file is not None:
        return _load_vqav2(root, split, questions_file)
    shards = sorted({p for n in SPLIT_NAMES[split] for p in root.glob(f"*{n}*.arrow")})
    if split == "val":  # ViLT writes trainable_val / rest_val beside val: only the val shard itself
        shards = [s for s in shards if not re.search(r"(trainable|rest)_val", s.name)] or shards
    if shards:
        return _load_shards(shards)
    raise DataError(f"{root}: no {split!r} VQA split; looked for *{split}*questions*.json with "
                    f"*{split}*annotations*.json, and *{split}*.arrow")


def answer_list(root: Path, train: list[Question]) -> list[str]:
    """The task's answer vocabulary: answers.json, or the training answers by frequency."""
    path = root / ANSWERS_FILE
    if path.is_file():
        try:
            answers = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{path}: expected a non-empty JSON list of answer strings")
        answers = [normalize_answer(a) for a in answers]
        twice = sorted({a for a in answers if answers.count(a) > 1})
        if twice:
            raise DataError(f"{path}: answer(s) {twice} listed more than once; each answer is one class")
        return answers
    counts = Counter(a for q in train for a, c in q.credits.items() if c > 0)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def load_vqa(root: str | Path) -> tuple[VqaData, VqaData]:
    """(train, val) of a VQA folder over one answer vocabulary."""
    root = Path(root)
    train, val = load_questions(root, "train"), load_questions(root, "val")
    answers = answer_list(root, train)
    return VqaData(train, answers, root), VqaData(val, answers, root)
