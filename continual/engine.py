"""The dispatcher: every stream of a config (one, a study's settings, each over seeds) in one run folder.

``run`` opens one workspace (host, tasks, pixel cache) for all of them, runs each stream's loop
(``continual.streams``) in this process, or, with ``executor: ray``, every step and evaluation of them all
as Ray tasks (``continual.ray_executor``), then writes the study's and the seeds' summaries.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

from omegaconf import OmegaConf

from continual import atomic
from continual.config import RunConfig, to_yaml
from continual.run_folder import CONFIG, RunFolder
from continual.streams import Workspace, finish_run, open_streams
from evaluation.report import SUMMARY, load_runs, run_outputs, study_outputs
from evaluation.seeds import seeds_outputs, seeds_summary

log = logging.getLogger(__name__)


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The config of one seed's run: no seeds list, the seed as train seed, its own folder."""
    one = copy.deepcopy(cfg)
    one.seeds, one.train.seed, one.run_dir = [], seed, str(RunFolder(cfg.run_dir).seed(seed))
    return one


def run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, progress: bool | None = None) -> Path:
    """Run every stream of the config (the unfinished steps, with ``resume``); returns the run folder.

    With ``seeds``, once per seed (the train seed: data order and module initialisation; the data stay the
    same), each in ``RUN_DIR/seed-N`` and resumable on its own, then summary.json and the report over them.
    The seeds' runs share one host, one load of the data and the evaluations that do not depend on the seed.
    ``executor: ray`` runs every step and evaluation of them all as Ray tasks (``continual.ray_executor``),
    to the same results.
    """
    folder = RunFolder(cfg.run_dir)
    previous = folder.prepare(resume, overwrite)
    if cfg.seeds:
        folder.record_config(to_yaml(cfg), previous)
    runs = [seed_config(cfg, seed) for seed in cfg.seeds] or [cfg]
    with folder.logging():  # what loading the data skipped goes to run.log too
        ws = Workspace.open(runs[0], progress)
    # each seed's folder checked (and its config text read) before anything runs
    previous_of = [previous if one is cfg else RunFolder(one.run_dir).prepare(resume, overwrite=False) for one in runs]
    if cfg.executor == "ray":
        from continual.ray_executor import run_on_ray

        run_on_ray(ws, [open_streams(dataclasses.replace(ws, cfg=one), resume, earlier)
                        for one, earlier in zip(runs, previous_of)])
    else:
        for one, earlier in zip(runs, previous_of):
            finish_run(one, {s.name: s.run() for s in open_streams(dataclasses.replace(ws, cfg=one), resume, earlier)})
    if cfg.seeds:
        write_summary(folder, cfg.name, cfg.seeds, cfg.is_study)
    return folder.path


def write_summary(folder: RunFolder, name: str, seeds: list[int], study: bool) -> None:
    runs = {seed: load_runs(folder.seed(seed).path) for seed in seeds}
    atomic.write_files(folder.path, seeds_outputs(seeds_summary(name, runs, study)))


def rebuild_reports(run_dir: Path) -> dict:
    """Rewrite report.md and the plots of a run folder (a study's, a run's over seeds) from its results.json
    files; returns their contents ({stream: results}; over seeds, {seed: {stream: results}})."""
    folder = RunFolder(run_dir)
    if folder.is_over_seeds:  # each seed's folder, then the summary
        summary = folder.read_json(SUMMARY)
        runs = {seed: rebuild_reports(folder.seed(seed).path) for seed in summary["seeds"]}
        write_summary(folder, summary["name"], summary["seeds"], "compat" in summary)
        return runs
    runs = load_runs(folder.path)
    if folder.is_stream:
        atomic.write_files(folder.path, run_outputs(next(iter(runs.values()))))
        return runs
    for setting, results in runs.items():
        atomic.write_files(folder.setting(setting).path, run_outputs(results))
    atomic.write_files(folder.path, study_outputs(study_name(folder), runs))
    return runs


def study_name(folder: RunFolder) -> str:
    """The name in the study's recorded config (the folder's name if it has none)."""
    config = folder / CONFIG
    return str(OmegaConf.load(config).get("name", folder.path.name)) if config.is_file() else folder.path.name
