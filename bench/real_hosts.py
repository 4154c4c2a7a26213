"""Hub-faithful hosts end to end: folders laid out as the three hub checkpoints a user would download
(IDEA-Research/grounding-dino-tiny, openai/clip-vit-base-patch32, dandelin/vilt-b32-finetuned-vqa), with
their config.json values, tokenizer files and image processors, but random weights, built offline;
each loaded through `build_host(folder)` as a hub id would be, then `continual run` on a 2-task stream
of real photos (the few that installed packages ship, written in the task kind's real layout: COCO,
ImageFolder, VQAv2) with every method the host takes, 2 training steps each, plus evaluation.

    .venv/bin/python bench/real_hosts.py                          # every host at CPU-sized images
    .venv/bin/python bench/real_hosts.py --host vilt --full-size  # the processors' real sizes (slow on CPU)

Prints one row per host and method: pass or the error, trainable parameters, seconds per training step.
What differs from the hub: random weights; CLIP's tokenizer is a byte-level BPE of one token per
character (CLIP's 49,408-token vocabulary and merges would need a download), in CLIP's own tokenizer
class; BERT's uncased WordPiece vocabulary (Grounding DINO's and ViLT's) is the MiniLM package's, which
is BERT-base's.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import continual  # noqa: E402,F401  (the torchvision shim first)
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from continual.hosts.base import build_host, minilm_path  # noqa: E402
from prompts import METHODS  # noqa: E402
from prompts.base import MethodError, build_module, check_sites  # noqa: E402

ANSWERS = ["yes", "no", "1", "2", "person", "flower", "building", "red", "blue", "green"]


def photos() -> dict[str, Path]:
    """Real photos that installed packages ship, by what they show."""
    import matplotlib

    found = {"person": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"}
    try:
        import sklearn

        images = Path(sklearn.__file__).parent / "datasets" / "images"
        found |= {"flower": images / "flower.jpg", "building": images / "china.jpg"}
    except ImportError:
        pass
    missing = [name for name, path in found.items() if not path.is_file()]
    if len(found) - len(missing) < 2:
        raise SystemExit(f"real_hosts: needs two photos from installed packages; missing {missing}")
    return {name: path for name, path in found.items() if path.is_file()}


def variants(photo: Path, count: int) -> list[Image.Image]:
    """``count`` views of a photo (crops and a flip), so a split has several images per class."""
    image = Image.open(photo).convert("RGB")
    w, h = image.size
    views = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
             image.crop((0, 0, int(w * 0.8), int(h * 0.8))), image.crop((int(w * 0.2), int(h * 0.2), w, h))]
    return views[:count]


# -- data in the real layouts -------------------------------------------------------------------------
def coco_folder(root: Path, shots: dict[str, Path]) -> Path:
    """COCO layout: annotations/instances_{train,val}.json, images in train/ and val/; a box per photo
    around its middle, of the photo's category."""
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(shots)]
    for split, count in (("train", 3), ("val", 2)):
        (root / split).mkdir(parents=True)
        images, boxes = [], []
        for category, (name, photo) in zip(categories, shots.items()):
            for view in variants(photo, count):
                image_id = len(images) + 1
                file = f"{image_id:06d}.jpg"
                view.save(root / split / file)
                w, h = view.size
                images.append({"id": image_id, "file_name": file, "width": w, "height": h})
                boxes.append({"id": len(boxes) + 1, "image_id": image_id, "category_id": category["id"],
                              "bbox": [w * 0.2, h * 0.2, w * 0.6, h * 0.6], "area": w * h * 0.36, "iscrowd": 0})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": boxes, "categories": categories}))
    return root


def image_folder(root: Path, shots: dict[str, Path]) -> Path:
    """ImageFolder layout: {train,val}/CLASS/*.jpg."""
    for split, count in (("train", 3), ("val", 2)):
        for name, photo in shots.items():
            (root / split / name).mkdir(parents=True)
            for i, view in enumerate(variants(photo, count)):
                view.save(root / split / name / f"{i}.jpg")
    return root


def vqav2_folder(root: Path, shots: dict[str, Path]) -> Path:
    """VQAv2 layout: per split *questions*.json and *annotations*.json, images in {split}2014/ named by id."""
    for split, count in (("train", 3), ("val", 2)):
        (root / f"{split}2014").mkdir(parents=True)
        questions, annotations = [], []
        for name, photo in shots.items():
            for view in variants(photo, count):
                image_id = len(questions) // 2 + 1
                view.save(root / f"{split}2014" / f"COCO_{split}2014_{image_id:012d}.jpg")
                for text, answer in ((f"is there a {name}?", "yes"), ("what is in the picture?", name)):
                    qid = len(questions) + 1
                    questions.append({"question_id": qid, "image_id": image_id, "question": text})
                    annotations.append({"question_id": qid, "answers": [{"answer": answer}] * 3})
        (root / f"v2_{split}_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"v2_{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


# -- hub-like checkpoint folders ----------------------------------------------------------------------
def grounding_dino_folder(folder: Path, full_size: bool) -> Path:
    """grounding-dino-tiny's config (transformers' defaults: Swin-T, BERT-base, 900 queries), its processor
    (shortest edge 800, longest 1333; 320 / 533 unless --full-size), BERT's uncased tokenizer."""
    from transformers import AutoTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection
    from transformers import GroundingDinoImageProcessor

    torch.manual_seed(0)
    GroundingDinoForObjectDetection(GroundingDinoConfig()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    edge = (800, 1333) if full_size else (320, 533)
    GroundingDinoImageProcessor(size={"shortest_edge": edge[0], "longest_edge": edge[1]}).save_pretrained(folder)
    return folder


def clip_folder(folder: Path, full_size: bool) -> Path:
    """clip-vit-base-patch32's config (transformers' defaults: ViT-B/32 at 224 px, a 512-wide text tower),
    its processor (resize to 224, centre crop), CLIP's tokenizer class over a per-character BPE."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    vocab_file = folder / "vocab.json"
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(vocab_file), str(folder / "merges.txt"))
    torch.manual_seed(0)
    config = CLIPConfig(text_config={"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1})
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = config.vision_config.image_size  # ViT-B/32's position embeddings fix it: 224 with or without --full-size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def vilt_folder(folder: Path, full_size: bool) -> Path:
    """vilt-b32-finetuned-vqa's config (transformers' defaults, ViLT-B/32, a head of 3,129 answers, ours
    among them), its processor (shortest edge 384, longest 640; 192 / 320 unless --full-size), BERT's
    uncased tokenizer."""
    from transformers import AutoTokenizer, ViltConfig, ViltForQuestionAnswering, ViltImageProcessor

    answers = ANSWERS + [f"answer {i}" for i in range(3129 - len(ANSWERS))]
    torch.manual_seed(0)
    config = ViltConfig(num_labels=len(answers), id2label=dict(enumerate(answers)),
                        label2id={a: i for i, a in enumerate(answers)})
    ViltForQuestionAnswering(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    edge = (384, 640) if full_size else (192, 320)
    ViltImageProcessor(size={"shortest_edge": edge[0], "longest_edge": edge[1]}).save_pretrained(folder)
    return folder


HOSTS = {  # name: (checkpoint folder, task kind, data layout)
    "grounding-dino": (grounding_dino_folder, "detection", coco_folder),
    "clip": (clip_folder, "classification", image_folder),
    "vilt": (vilt_folder, "vqa", vqav2_folder),
}


def methods_for(host) -> list[str]:
    usable = []
    for name in sorted(METHODS):
        try:
            check_sites(build_module(name), host.kind, host.site_kinds)
            usable.append(name)
        except MethodError:
            pass
    return usable


def run_host(name: str, scratch: Path, full_size: bool) -> list[dict]:
    make_folder, kind, make_data = HOSTS[name]
    started = time.perf_counter()
    folder = make_folder(scratch / f"{name}-checkpoint", full_size)
    host = build_host(folder)
    print(f"[real_hosts] {name}: {type(host).__name__} from {folder.name} "
          f"({sum(p.numel() for p in host.parameters()) / 1e6:.1f}M parameters, "
          f"built and loaded in {time.perf_counter() - started:.0f} s)", flush=True)
    shots = photos()
    names = list(shots)
    tasks = {"first": make_data(scratch / f"{name}-first", {k: shots[k] for k in names[:2]}),
             "second": make_data(scratch / f"{name}-second", {k: shots[k] for k in names[-2:]})}
    rows = []
    for method in methods_for(host):
        config = {
            "name": f"{name}-{method}", "run_dir": str(scratch / "runs" / f"{name}-{method}"), "host": str(folder),
            "train": {"steps": 2, "batch_size": 2, "warmup": 1}, "eval_batch_size": 4, "checkpoint_every": 0,
            "tasks": {t: {"data": str(path), "kind": kind} for t, path in tasks.items()},
            # full fine-tuning changes the host's own weights, so nothing stacks on it: the second task zero-shot
            "stream": [{"task": "first", "method": method},
                       {"task": "second", "method": "none" if method == "full_ft" else method}]}
        path = scratch / f"{name}-{method}.json"
        path.write_text(json.dumps(config))
        row = {"host": name, "method": method}
        try:
            results = continual.run(path, overwrite=True, progress=False)
            timing = json.loads((Path(config["run_dir"]) / "timing.json").read_text())
            seconds = sorted(t for s in timing["steps"] for t in s.get("step_seconds") or [])
            row |= {"passed": True, "trainable": results.stream.steps[0]["trainable_params"],
                    "seconds_per_step": seconds[len(seconds) // 2] if seconds else None}
        except Exception as err:  # noqa: BLE001 (a bench: every failure is a row to report)
            row |= {"passed": False, "error": f"{type(err).__name__}: {err}".splitlines()[0][:200]}
            traceback.print_exc()
        print(f"[real_hosts] {name} {method}: {'pass' if row['passed'] else 'FAIL ' + row['error']}", flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| host | method | result | trainable | s / step |", "|---|---|---|---|---|"]
    for r in rows:
        step = f"{r['seconds_per_step']:.2f}" if r.get("seconds_per_step") else "–"
        lines.append(f"| {r['host']} | {r['method']} | {'pass' if r['passed'] else 'FAIL: ' + r['error']} | "
                     f"{r.get('trainable', 0):,} | {step} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", choices=[*HOSTS, "all"], default="all")
    parser.add_argument("--full-size", action="store_true", help="the processors' real image sizes")
    parser.add_argument("--keep", help="write the folders and runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    scratch = Path(args.keep or tempfile.mkdtemp(prefix="real-hosts-"))
    try:
        rows = [row for name in (HOSTS if args.host == "all" else [args.host])
                for row in run_host(name, scratch, args.full_size)]
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print(table(rows))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
