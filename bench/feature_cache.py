"""Epoch time with and without the frozen-trunk feature cache, and whether the losses are identical.

    .venv/bin/python bench/feature_cache.py [--method sdpt] [--images 64] [--epochs 3] [--batch 8]

Runs the engine twice on the same one-task stream (the aquarium world),
feature_cache true then false, and prints per-epoch wall times (data loading
included) from each run's timing.json, the ratio of later epochs, and whether
the per-step losses match bit for bit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import continual  # noqa: E402,F401
from continual import engine  # noqa: E402
from continual.config import DataConfig, RunConfig, StepConfig, TaskConfig, validate  # noqa: E402
from continual.training import TrainConfig  # noqa: E402


def run(method: str, images: int, epochs: int, batch: int, cache: bool, folder: Path) -> tuple[list[float], list]:
    cfg = RunConfig(name=f"cache-{cache}", run_dir=str(folder / f"cache-{cache}"), feature_cache=cache,
                    data=DataConfig(train_images=images, val_images=8),
                    train=TrainConfig(steps=epochs * images // batch, batch_size=batch, warmup=1),
                    tasks={"aquarium": TaskConfig(data="synthetic:aquarium")},
                    stream=[StepConfig(task="aquarium", method=method)], checkpoint_every=0)
    validate(cfg, "bench")
    run_dir = engine.run(cfg, overwrite=True, progress=False)
    timing = json.loads((run_dir / "timing.json").read_text())["steps"][0]
    losses = json.loads((run_dir / "results.json").read_text())["losses"]["aquarium"]
    per_epoch = images // batch
    steps = timing["step_seconds"]
    return [sum(steps[e * per_epoch:(e + 1) * per_epoch]) for e in range(epochs)], losses, timing["trunk_cache"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="sdpt")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        cached, cached_losses, stats = run(args.method, args.images, args.epochs, args.batch, True, Path(tmp))
        plain, plain_losses, _ = run(args.method, args.images, args.epochs, args.batch, False, Path(tmp))
    later_cached, later_plain = statistics.median(cached[1:]), statistics.median(plain[1:])
    report = {"method": args.method, "images": args.images, "batch": args.batch,
              "epoch_seconds_cached": cached, "epoch_seconds_plain": plain,
              "later_epoch_speedup": later_plain / later_cached, "first_epoch_ratio": plain[0] / cached[0],
              "identical_losses": cached_losses == plain_losses, "cache": stats}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
