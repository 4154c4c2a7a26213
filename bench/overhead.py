"""Engine overhead: the share of a run's wall time spent outside the model's own work.

    .venv/bin/python bench/overhead.py runs/demo            # a finished run, study or run over seeds
    .venv/bin/python bench/overhead.py --run configs/compat.yaml run_dir=/tmp/overhead

"Model" time is every training iteration's forward, backward and optimizer
step plus every evaluation forward (continual.loop.ModelClock); the rest (data
loading, COCO evaluation, TensorBoard and run.log, checkpoints, module saves,
reports) is overhead. Read from each stream's timing.json; the wall time there
starts when the stream starts (host loading and world generation come before
and are left out).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timings(run_dir: Path) -> dict[str, dict]:
    """Each stream's timing.json: the run's own, or its settings' (and seeds') below it."""
    files = sorted(run_dir.rglob("timing.json"))
    if not files:
        raise SystemExit(f"{run_dir}: no timing.json in it or in its setting (or seed) folders")
    return {str(f.parent.relative_to(run_dir)): json.loads(f.read_text()) for f in files}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a run folder, or with --run a config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for --run")
    parser.add_argument("--run", action="store_true", help="run the config first (overwriting its run folder)")
    args = parser.parse_args(argv)
    if args.run:
        import continual  # noqa: F401
        from continual import engine
        from continual.config import load_config

        run_dir = engine.run(load_config(args.target, args.overrides), overwrite=True, progress=False)
    else:
        run_dir = Path(args.target)
    rows = timings(run_dir)
    wall = sum(t["wall_seconds"] for t in rows.values())
    model = sum(t["model_seconds"] for t in rows.values())
    for name, t in rows.items():
        print(f"{name:<40} wall {t['wall_seconds']:7.1f} s  model {t['model_seconds']:7.1f} s  "
              f"outside the model {t['outside_model_fraction']:.1%}")
    print(f"{'all':<40} wall {wall:7.1f} s  model {model:7.1f} s  outside the model {1 - model / wall:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
