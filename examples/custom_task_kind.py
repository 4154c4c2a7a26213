"""A new task kind in user code: multi-label recognition ("which of the classes are in this image?"), read
from COCO-layout folders (so synthetic scenes, COCO and ODinW exports all serve), scored by micro F1, and
learned by the dual encoder through a subclass that adds the kind with a sigmoid loss over the classes.

    python examples/custom_task_kind.py [--steps 20]

A config uses it with `imports: [custom_task_kind]` and `kind: multilabel` on its tasks.
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

import continual as cl


class MultiLabelScenes:
    """One split of a COCO-layout folder: each image with the set of categories it holds (multi-hot)."""

    def __init__(self, annotations: Path, images: Path):
        coco = json.loads(annotations.read_text())
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        self.class_names = [c["name"] for c in categories]
        column = {c["id"]: i for i, c in enumerate(categories)}
        self.images = sorted(coco["images"], key=lambda image: image["id"])
        present = {image["id"]: set() for image in self.images}
        for box in coco["annotations"]:
            present[box["image_id"]].add(column[box["category_id"]])
        self.labels = [[float(c in present[image["id"]]) for c in range(len(categories))] for image in self.images]
        self.folder = images

    def __len__(self) -> int:
        return len(self.images)

    def open_image(self, index: int) -> Image.Image:
        return Image.open(self.folder / self.images[index]["file_name"]).convert("RGB")

    def target(self, index: int) -> dict:
        return {"image_id": index, "labels": self.labels[index]}


class MicroF1:
    """Micro-averaged F1 of the classes predicted present (sigmoid score over 0.5), and exact-set accuracy."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.true_pos = self.false_pos = self.false_neg = self.exact = self.images = 0

    def process(self, targets, predictions) -> None:
        for target, prediction in zip(targets, predictions):
            truth, guess = target["labels"].bool(), prediction["scores"] > 0.5
            self.true_pos += int((truth & guess).sum())
            self.false_pos += int((~truth & guess).sum())
            self.false_neg += int((truth & ~guess).sum())
            self.exact += int(torch.equal(truth, guess))
            self.images += 1

    def evaluate(self) -> dict[str, float]:
        found = 2 * self.true_pos + self.false_pos + self.false_neg
        return {"f1": 2 * self.true_pos / found if found else 0.0,
                "exact_set_accuracy": self.exact / self.images if self.images else 0.0, "images": float(self.images)}


@cl.register_task_kind
class MultiLabel(cl.TaskKind):
    """Which classes an image holds: COCO-layout folders read as multi-hot labels; micro F1."""

    name, metric, logged = "multilabel", "f1", ("exact_set_accuracy",)
    world_layout = "coco"  # synthetic:WORLD gives scenes in the COCO layout
    uses_template = True  # the dual encoder prompts with "a photo of a {}."

    def load(self, root: Path, options: cl.LoadOptions) -> cl.LoadedData:
        splits = {}
        for split in ("train", options.val_split):
            annotations = root / "annotations" / f"instances_{split}.json"
            if not annotations.is_file():
                raise cl.ContinualError(f"{root}: no {annotations.relative_to(root)} (a COCO-layout folder)")
            splits[split] = MultiLabelScenes(annotations, root / split)
        return cl.LoadedData(splits["train"], splits[options.val_split], splits["train"].class_names)

    def evaluator(self, task):
        return MicroF1()


@cl.register_host
class MultiLabelDualEncoder(cl.DualEncoderHost):
    """The dual encoder with the multilabel kind: each class scored on its own (sigmoid), not against the rest."""

    kind = "dual-encoder-multilabel"
    task_kinds = (*cl.DualEncoderHost.task_kinds, "multilabel")
    model_types = builtins = ()  # built from a dual encoder in code, below

    def presence_logits(self, batch) -> torch.Tensor:
        """(B, C): a class counts as present where its cosine with the image passes 0.5 (the scaled cosine
        minus half the scale), so that the zero-shot model already reads presence."""
        return self.logits(batch).float() - self.model.logit_scale.exp().float() / 2

    def loss(self, batch):
        if batch.kind != "multilabel":
            return super().loss(batch)
        logits = self.presence_logits(batch)
        labels = torch.stack([t["labels"] for t in batch.targets]).to(logits.device).float()
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        return loss, {"loss_bce": loss.detach()}

    @torch.no_grad()
    def predict(self, batch):
        if batch.kind != "multilabel":
            return super().predict(batch)
        return [{"scores": row} for row in torch.sigmoid(self.presence_logits(batch))]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per task (default %(default)s)")
    parser.add_argument("--train-images", type=int, default=40)
    parser.add_argument("--val-images", type=int, default=20)
    args = parser.parse_args(argv)

    shipped = cl.build_host("builtin:tiny-clip")
    host = MultiLabelDualEncoder(shipped.model, shipped.tokenizer, shipped.image_size, shipped.source,
                                 shipped.text_pooling, shipped.image_processor, shipped.text_from_package)
    sizes = {"train_images": args.train_images, "val_images": args.val_images, "kind": "multilabel"}
    tasks = [cl.load_task("synthetic:fruit", host=host, **sizes), cl.load_task("synthetic:vehicles", host=host, **sizes)]
    stack = cl.Stack(host)
    zero_shot = [cl.evaluate(stack, t)["f1"] for t in tasks]
    matrix = []
    for index, (task, method) in enumerate(zip(tasks, ["adapter", "lora"])):
        cl.train(stack, cl.build_module(method, task=task), task,
                 cl.TrainConfig(steps=args.steps, batch_size=8, warmup=1, seed=index))
        matrix.append([cl.evaluate(stack, t)["f1"] for t in tasks])
    derived = cl.derived_metrics([t.name for t in tasks], matrix, zero_shot)
    print(f"multilabel F1: zero-shot {[round(v, 3) for v in zero_shot]}, "
          f"matrix {[[round(v, 3) for v in row] for row in matrix]}, BWT {derived['bwt']:.3f}")
    return {"tasks": tasks, "zero_shot": zero_shot, "matrix": matrix}


if __name__ == "__main__":
    main()
