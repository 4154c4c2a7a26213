"""Data loading at a real checkpoint's input size: images per second through decoding and the Grounding DINO
image processor (shortest edge 800, longest 1333, the hub checkpoints' preprocessor_config.json), by the
number of worker processes. The pixel cache is off, so every image is processed each time.

    .venv/bin/python bench/loading.py [--images 64] [--workers 0 2] [--source-size 640] [--train-steps 3]

The images are a synthetic world drawn at ``--source-size`` px (PNG), the batches those of a training step
(8 images); the figure is the median over ``--reps`` passes of images per second. With ``--train-steps N``,
also N training steps of SDPT on the T-sized Grounding DINO (``builtin:t-size``, random weights) at the same
inputs, batch 2, feature cache off, per number of workers: the median seconds per step (the first step,
which starts the workers, left out).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--source-size", type=int, default=640, help="side of the drawn images")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=0, help="also time training steps on the T-sized host")
    parser.add_argument("--device", default="cpu", help="of the training steps: cpu or cuda")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="of the training steps")
    args = parser.parse_args()

    import continual as cl
    from continual.loading import PixelCache, train_loader
    from transformers import GroundingDinoImageProcessor

    host = cl.build_host("builtin:tiny-base")
    host.image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333})
    task = cl.load_task("synthetic:base", train_images=args.images, val_images=1, image_size=args.source_size)
    shape = tuple(host.to_pixels(task.train.open_image(0)).shape)
    print(f"{args.images} images of {args.source_size} px -> {shape} uint8, batch 8, "
          f"{args.reps} passes, pixel cache off")
    for workers in args.workers:
        rates = []
        for _ in range(args.reps):
            loader = train_loader(task.train, PixelCache(host.to_pixels, max_mb=0), 8, args.images // 8, seed=0,
                                  workers=workers)
            tick = time.perf_counter()
            count = sum(len(images) for images, _ in loader)
            rates.append(count / (time.perf_counter() - tick))
        print(f"workers {workers}: {statistics.median(rates):.1f} images/s (passes: "
              f"{', '.join(f'{r:.1f}' for r in rates)})")
    if args.train_steps:
        t_size = cl.build_host("builtin:t-size").to(args.device)
        t_size.image_processor = host.image_processor
        for workers in args.workers:
            record = cl.train(cl.Stack(t_size), cl.build_module("sdpt", task=task), task,
                              cl.TrainConfig(steps=args.train_steps + 1, batch_size=2, warmup=1),
                              feature_cache=False, progress=False, workers=workers, precision=args.precision)
            step = statistics.median(record.step_seconds[1:])
            print(f"T-sized SDPT step on {args.device} ({args.precision}), workers {workers}: {step:.2f} s, "
                  f"{2 / step:.1f} images/s (steps: {', '.join(f'{s:.2f}' for s in record.step_seconds[1:])})")


if __name__ == "__main__":
    main()
