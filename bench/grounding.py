"""Does a grounding host read the words of its prompt? One table of probes (COCO mAP@[.5:.95]):

- the base world under its own category names ("red circle");
- the same images under held-out synonyms, words no pretraining used ("crimson ball", tasks.vocabulary);
- the same images with the colour words swapped between categories ("blue circle" asked for the red circles):
  a host that grounds colour words finds almost nothing there;
- the held-out colour-shape combinations of seen words (world ``combos``: "blue square", ...);
- zero-shot on every novel world.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="builtin:tiny-base")
    parser.add_argument("--out", type=Path, help="also write the table to OUT/grounding-NAME.md")
    args = parser.parse_args()
    import transformers

    from continual.evaluate import evaluate_task
    from continual.hosts.base import build_host
    from tasks.task import load_task

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    host = build_host(args.checkpoint)
    started = time.time()
    rows, own = [], None
    for probe, spec, overrides in probes():
        task = load_task(spec, phrase_overrides=overrides, train_split=False)
        metrics = evaluate_task(host, task, progress=False)
        own = own if own is not None else metrics["mAP"]
        example = f"{task.phrases[0]}, {task.phrases[1]}, ..."
        rows.append(f"| {probe} | {example} | {metrics['mAP']:.3f} | {metrics['AP50']:.3f} | "
                    f"{metrics['mAP'] / own:.2f} |")
    lines = [f"Grounding probes of `{args.checkpoint}` (COCO mAP@[.5:.95] on each world's 100 val images; "
             f"ratio: to the base world under its own names). {time.time() - started:.0f} s.", "",
             "| probe | phrases | mAP | AP50 | ratio |", "|---|---|---|---|---|", *rows]
    print("\n".join(lines))
    if args.out:
        name = args.checkpoint.split(":")[-1].rstrip("/").split("/")[-1]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"grounding-{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
