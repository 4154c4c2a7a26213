"""Does a grounding host read the words of its prompt? One table of probes (COCO mAP@[.5:.95]):

- the base world under its own category names ("red circle");
- the same images under held-out synonyms, words no pretraining used ("crimson ball", tasks.vocabulary);
- the same images with the colour words swapped between categories ("blue circle" asked for the red circles):
  a host that reads colour words ranks the red circles below the blue ones there (word_reader: how far that
  lowers COCO AP, which reads ranks, not score levels);
- the held-out colour-shape combinations of seen words (world ``combos``: "blue square", ...);
- zero-shot on every novel world.

A second table says where the host keeps each attribute: a linear probe (ridge-regression classifier, fitted on 70% of
the objects of the ``grounding`` world's val images, accuracy on the other 30%) from the backbone's stride-8
features averaged over each object's box, and from the decoder's last state of the query whose box is nearest
the object, to the object's colour and to its shape. A host whose queries forget colour cannot read colour words.
A line says how often the query nearest each base-world object scores the object's own phrase highest, and whether
the misses share its shape or its colour.
A line says how far the text encoder alone carries the held-out names: a linear map from its mean-pooled
phrase states to the ``grounding`` world's categories, fitted on all their pretraining phrasings ("scarlet disc"),
scores each held-out name ("crimson ball") against the base categories; a host can hardly ground a synonym that
no map fitted on the pretraining words carries to its category. A last line: what a perfect reader of both
words scores under own and swapped names (word_reader).

    .venv/bin/python bench/grounding.py                                  # the shipped builtin:tiny-base
    .venv/bin/python bench/grounding.py --checkpoint FOLDER --out bench/results

The worlds are the runs' defaults (seed 0, 400 train / 100 val images; only val is evaluated), so a
figure here is the one a `continual run` with the task as a held-out task reports zero-shot.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import continual  # noqa: E402,F401  (torchvision shim)


def probes() -> list[tuple[str, str, dict | None]]:
    """(probe, task spec, phrase overrides) in table order."""
    from tasks.vocabulary import held_out_phrase, swapped_phrase
    from tasks.worlds import NOVEL_WORLDS, WORLDS

    base = [c.name for c in WORLDS["base"].categories]
    return [("base, own names", "synthetic:base", None),
            ("base, held-out synonyms", "synthetic:base", {p: held_out_phrase(p) for p in base}),
            ("base, swapped colour words", "synthetic:base", {p: swapped_phrase(p) for p in base}),
            ("held-out combinations", "synthetic:combos", None),
            *((f"zero-shot {w}", f"synthetic:{w}", None) for w in NOVEL_WORLDS)]


def ridge_classifier(features, labels, classes: int, ridge: float = 1.0):
    """A ridge-regression classifier (one-hot targets, closed form in float64, features standardised on the fitting
    set): deterministic, where an iterative fit would vary with the threads. Returns ``scores(x) -> (N, classes)``."""
    import torch

    mean, std = features.double().mean(0), features.double().std(0) + 1e-6

    def design(x):
        x = (x.double() - mean) / std
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)

    x = design(features)
    targets = torch.nn.functional.one_hot(labels, classes).double()
    weights = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ targets)
    return lambda new: design(new) @ weights


def linear_probe(features, labels, train_share: float = 0.7, ridge: float = 1.0) -> float:
    """Accuracy on the last ``1 - train_share`` of (``features`` (N, D), ``labels`` (N,)) of a ridge classifier
    fitted on the rest."""
    n = int(len(features) * train_share)
    scores = ridge_classifier(features[:n], labels[:n], int(labels.max()) + 1, ridge)(features[n:])
    return scores.argmax(1).eq(labels[n:]).double().mean().item()


def attribute_probes(host) -> list[str]:
    """Table rows: colour and shape probe accuracy from the backbone and from the decoder's queries."""
    import torch

    from tasks.task import load_task
    from tasks.vocabulary import split_phrase

    task = load_task("synthetic:grounding", train_split=False)
    inner = host.model.model
    captured = {}
    hook = inner.backbone.register_forward_hook(lambda module, args, out: captured.update(maps=out[0][0][0]))
    features = {"backbone": [], "decoder": []}
    attributes = []
    try:
        with torch.no_grad():
            for index in range(len(task.val)):
                image, target = task.val[index]
                pixels, mask = host.pixel_batch([host.to_pixels(image)])
                # the first of the world's prompts (about 20 of its 30 names): the queries read text, any text
                out = host.raw_outputs(pixels, host.prompts(task.phrases)[0], pixel_mask=mask)
                maps = captured["maps"][0]  # (C, H, W) at stride 8
                height, width = maps.shape[-2:]
                for label, box in zip(target["class_labels"], target["boxes"]):
                    cx, cy, w, h = box.tolist()
                    rows, columns = _cells(cy, h, height), _cells(cx, w, width)
                    features["backbone"].append(maps[:, rows, columns].mean((1, 2)))
                    nearest = _nearest_query(out.pred_boxes[0], box)
                    features["decoder"].append(out.last_hidden_state[0, nearest])
                    attributes.append(split_phrase(task.phrases[int(label)]))
    finally:
        hook.remove()
    rows = []
    for part, name in ((0, "colour"), (1, "shape")):
        values = sorted({a[part] for a in attributes})
        labels = torch.tensor([values.index(a[part]) for a in attributes])
        accuracy = [linear_probe(torch.stack(features[site]), labels) for site in ("backbone", "decoder")]
        rows.append(f"| {name} ({len(values)}; chance {1 / len(values):.2f}) | {accuracy[0]:.2f} | {accuracy[1]:.2f} |")
    return [f"Linear probes on {len(attributes)} objects of the grounding world's val images (accuracy on the "
            "held-out 30%).", "", "| attribute | backbone (stride 8, box mean) | decoder (nearest query) |",
            "|---|---|---|", *rows]


def phrase_choices(host) -> str:
    """On the base world's val images under its own names: how often the query nearest each object scores the
    object's own phrase highest, and what the misses share with it."""
    import torch

    from tasks.task import load_task
    from tasks.vocabulary import split_phrase

    task = load_task("synthetic:base", train_split=False)
    own_words = [split_phrase(p) for p in task.phrases]
    (prompt,) = host.prompts(task.phrases)
    right, same_shape, same_colour, objects = 0, 0, 0, 0
    with torch.no_grad():
        for index in range(len(task.val)):
            image, target = task.val[index]
            pixels, mask = host.pixel_batch([host.to_pixels(image)])
            out = host.raw_outputs(pixels, prompt, pixel_mask=mask)
            scores = host.phrase_scores(out.logits[0], prompt)  # as predict scores them
            for label, box in zip(target["class_labels"], target["boxes"]):
                nearest = _nearest_query(out.pred_boxes[0], box)
                chosen, own = own_words[int(scores[nearest].argmax())], own_words[int(label)]
                objects += 1
                right += chosen == own
                same_shape += chosen != own and chosen[1] == own[1]
                same_colour += chosen != own and chosen[0] == own[0]
    return (f"Phrase choice: on the base world's {objects} val objects, the query nearest each object scores its "
            f"own phrase highest for {right / objects:.0%}; the misses name its shape ({same_shape / objects:.0%})"
            f" or its colour ({same_colour / objects:.0%}) with another word, or neither.")


def _nearest_query(pred_boxes, box):
    """The query whose predicted box (cxcywh) is nearest ``box`` in L1."""
    return (pred_boxes - box).abs().sum(-1).argmin()


def _cells(centre: float, size: float, cells: int) -> slice:
    """The feature-map cells (at least one) that a box side covers, from its centre and size as fractions."""
    start = int((centre - size / 2) * cells)
    return slice(start, max(int((centre + size / 2) * cells), start + 1))


def text_readout(host) -> str:
    """How far the text encoder alone carries the held-out names: a linear map from its phrase states to the
    categories, fitted on every pretraining phrasing of the grounding world's categories, read on the held-out
    names of the base categories (the most any projection trained on those phrasings is likely to pass on)."""
    import itertools

    import torch

    from tasks.vocabulary import COLOURS, SHAPES, held_out_phrase, split_phrase
    from tasks.worlds import WORLDS

    categories = [split_phrase(c.name) for c in WORLDS["grounding"].categories]
    phrasings = [(index, f"{colour_word} {shape_word}") for index, (colour, shape) in enumerate(categories)
                 for colour_word, shape_word in itertools.product(COLOURS[colour].train, SHAPES[shape].train)]
    base = [c.name for c in WORLDS["base"].categories]
    own = torch.tensor([categories.index(split_phrase(c)) for c in base])
    with torch.no_grad():
        known = host.phrase_embeddings([p for _, p in phrasings])
        held_out = host.phrase_embeddings([held_out_phrase(c) for c in base])
    labels = torch.tensor([index for index, _ in phrasings])
    found = []
    for ridge in (1.0, 10.0, 100.0):
        scores = ridge_classifier(known, labels, len(categories), ridge)(held_out)[:, own]  # among the base ones
        ranks = (scores > scores.diag()[:, None]).sum(1)  # categories scored above the own one
        found.append((int((ranks == 0).sum()), ranks.double().mean().item(), ridge))
    first, rank, ridge = max(found)
    return (f"Text encoder alone: a linear map from its phrase states to the {len(categories)} categories, fitted "
            f"on their {len(phrasings)} pretraining phrasings (ridge {ridge:g}, the best of 1, 10, 100), scores "
            f"the own category highest among the {len(base)} base categories for {first} of their {len(base)} "
            f"held-out names (mean rank {rank:.1f}; 0 is first).")


def word_reader(overrides: dict | None, levels=(0.9, 0.1, 0.01), top_k: int = 100) -> float:
    """mAP on the base world of an oracle that reads both words of every phrase: each object's exact box with
    every phrase of the prompt, scored ``levels[0]`` where the phrase names the object's colour and shape,
    ``levels[1]`` where it names one of them, ``levels[2]`` neither (ties broken at random), its best ``top_k``
    per image as a host's. What the probe can show at best: COCO AP ranks each phrase's detections over all
    images and reads no score level."""
    import torch
    from transformers.image_transforms import center_to_corners_format

    from tasks.task import load_task
    from tasks.vocabulary import split_phrase

    own = [split_phrase(p) for p in load_task("synthetic:base", train_split=False).phrases]  # what the objects are
    task = load_task("synthetic:base", phrase_overrides=overrides, train_split=False)
    evaluator = task.evaluator()
    asked = [tuple(phrase.split(" ", 1)) for phrase in task.phrases]  # the words each phrase names
    generator = torch.Generator().manual_seed(0)
    for index in range(len(task.val)):
        _, target = task.val[index]
        found = [(box, phrase, levels[2 - (words[0] == own[int(c)][0]) - (words[1] == own[int(c)][1])])
                 for c, box in zip(target["class_labels"], target["boxes"]) for phrase, words in enumerate(asked)]
        scores = torch.tensor([level for *_, level in found]) + 1e-3 * torch.rand(len(found), generator=generator)
        best = scores.argsort(descending=True)[:top_k]
        boxes = torch.stack([box for box, *_ in found])[best]
        evaluator.process([target], [{"boxes": center_to_corners_format(boxes),
                                      "scores": scores[best], "labels": torch.tensor([f[1] for f in found])[best]}])
    return evaluator.evaluate()["mAP"]


def word_reader_line() -> str:
    from tasks.vocabulary import swapped_phrase
    from tasks.worlds import WORLDS

    base = [c.name for c in WORLDS["base"].categories]
    own, swapped = word_reader(None), word_reader({p: swapped_phrase(p) for p in base})
    return (f"A reader of both words (an oracle: each object's exact box, 0.9 for a phrase naming its colour and "
            f"shape, 0.1 for one of them, 0.01 for neither): own names {own:.3f}, swapped colour words "
            f"{swapped:.3f} ({swapped / own:.2f}).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin:tiny-base")
    parser.add_argument("--out", type=Path, help="also write the table to OUT/grounding-NAME.md")
    args = parser.parse_args()
    import transformers

    from continual.hosts.base import build_host
    from continual.loop import evaluate
    from tasks.task import load_task

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    host = build_host(args.checkpoint)  # in eval mode, as it predicts
    started = time.time()
    rows, own = [], None
    for probe, spec, overrides in probes():
        task = load_task(spec, phrase_overrides=overrides, train_split=False)
        metrics = evaluate(host, task, progress=False)
        own = own if own is not None else metrics["mAP"]
        example = f"{task.phrases[0]}, {task.phrases[1]}, ..."
        rows.append(f"| {probe} | {example} | {metrics['mAP']:.3f} | {metrics['AP50']:.3f} | "
                    f"{metrics['mAP'] / own:.2f} |")
    lines = [f"Grounding probes of `{args.checkpoint}` (COCO mAP@[.5:.95] on each world's 100 val images; "
             f"ratio: to the base world under its own names). {time.time() - started:.0f} s.", "",
             "| probe | phrases | mAP | AP50 | ratio |", "|---|---|---|---|---|", *rows, "",
             *attribute_probes(host), "", phrase_choices(host), "",
             text_readout(host), "", word_reader_line()]
    print("\n".join(lines))
    if args.out:
        name = args.checkpoint.split(":")[-1].rstrip("/").split("/")[-1]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"grounding-{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
