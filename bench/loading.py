"""Data loading at a real checkpoint's input size: images per second through decoding and the Grounding DINO
image processor (shortest edge 800, longest 1333, the hub checkpoints' preprocessor_config.json), by the
number of worker processes. The pixel cache is off, so every image is processed each time.

    .venv/bin/python bench/loading.py [--images 64] [--workers 0 2] [--source-size 640]

The images are a synthetic world drawn at ``--source-size`` px (PNG), the batches those of a training step
(8 images); the figure is the median over ``--reps`` passes of images per second.
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


if __name__ == "__main__":
    main()
