"""VQA accuracy of a ViLT checkpoint per question type on synthetic worlds (the types tasks/questions.py asks).

    .venv/bin/python bench/vqa_question_types.py                       # builtin:tiny-vilt on base and aquarium
    .venv/bin/python bench/vqa_question_types.py --checkpoint FOLDER --world fruit --world space

One answer per synthetic question, so VQA accuracy is exact match; the type of
each question is read from the world's annotations (``question_type``).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import continual  # noqa: E402,F401  (torchvision shim)
from continual.hosts.base import Batch, build_host  # noqa: E402
from tasks.task import load_task  # noqa: E402
from tasks.worlds import WorldSizes  # noqa: E402


@torch.no_grad()
def by_type(host, world: str, val_images: int, batch: int = 100) -> dict[str, tuple[float, int]]:
    task = load_task(f"synthetic:{world}", kind="vqa", sizes=WorldSizes(val=val_images))
    kinds = {a["question_id"]: a["question_type"]
             for a in json.loads((task.root / "val_annotations.json").read_text())["annotations"]}
    hits, counts = Counter(), Counter()
    for start in range(0, len(task.val), batch):
        images, targets = zip(*(task.val[i] for i in range(start, min(start + batch, len(task.val)))))
        for target, pred in zip(targets, host.predict(Batch.of(task, host.preprocess(list(images)), targets, train=False))):
            kind = kinds[target["question_id"]]
            counts[kind] += 1
            hits[kind] += int(int(pred["scores"].argmax()) in target["answer_ids"].tolist())
    return {k: (hits[k] / counts[k], counts[k]) for k in sorted(counts)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="builtin:tiny-vilt")
    parser.add_argument("--world", action="append", help="synthetic world (repeatable; default base, aquarium)")
    parser.add_argument("--val-images", type=int, default=100, help="validation scenes (3 questions each)")
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    host = build_host(args.checkpoint)
    for world in args.world or ["base", "aquarium"]:
        row = by_type(host, world, args.val_images)
        print(f"{world}: " + ", ".join(f"{k} {acc:.2f} ({n})" for k, (acc, n) in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
