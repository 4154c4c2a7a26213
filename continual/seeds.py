"""A config run once per seed (``seeds: [0, 1, 2]``), each seed's run in ``RUN_DIR/seed-N``, then summary.json
and report.md over them (evaluation.seeds). The seed is the train seed: data order and module initialisation;
the data sets (``data.seed``) stay the same, so the interval measures training noise alone. The seeds' runs
share one host, one load of the data and the evaluations that do not depend on the seed (the zero-shot row)."""
from __future__ import annotations

import copy
from pathlib import Path

from continual import atomic
from continual.config import RunConfig, to_yaml
from evaluation.report import load_runs
from evaluation.seeds import seeds_outputs, seeds_summary


def seed_folder(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / f"seed-{seed}"


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The config of one seed's run: no seeds list, the seed as train seed, its own folder."""
    one = copy.deepcopy(cfg)
    one.seeds, one.train.seed, one.run_dir = [], seed, str(seed_folder(cfg.run_dir, seed))
    return one


def run_seeds(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Every seed's run (each resumable on its own), then the summary over them."""
    from continual.engine import Workspace, prepare_run_dir, record_config, run, run_log

    run_dir = Path(cfg.run_dir)
    previous = prepare_run_dir(run_dir, resume, overwrite)
    record_config(run_dir, to_yaml(cfg), previous)
    with run_log(run_dir):  # what loading the data skipped: the seeds' runs share the host and the data
        shared = Workspace.open(seed_config(cfg, cfg.seeds[0]), progress)
    for seed in cfg.seeds:
        run(seed_config(cfg, seed), resume=resume, progress=progress, shared=shared)
    return write_summary(run_dir, cfg.name, cfg.seeds, cfg.is_study)


def write_summary(run_dir: Path, name: str, seeds: list[int], study: bool) -> Path:
    runs = {seed: load_runs(seed_folder(run_dir, seed)) for seed in seeds}
    atomic.write_files(run_dir, seeds_outputs(seeds_summary(name, runs, study)))
    return run_dir
