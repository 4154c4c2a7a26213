"""One run's folder: every file name the engine reads or writes, its preparation and its log.

    RUN_DIR/config.yaml           the config the run goes on with (config.previous.yaml: one it replaced)
           state.json             the finished steps (resume reads it)
           checkpoint.pt          inside a step: its module, optimizer, RNG, losses (gone when the run ends)
           results.json           the matrix and the derived metrics, deterministic
           timing.json            wall and model seconds per step
           report.md, plots/      made from results.json (evaluation.report)
           run.log, tensorboard/  the engine's messages, losses and metrics
           fewshot.json           a few-shot grid's cells (instead of the stream files)
           modules/NN-TASK-METHOD/ each trained module in the PEFT layout
    A study: one such folder per setting (RUN_DIR/SETTING), with compat.json and the study's report beside.
    Over seeds: RUN_DIR/seed-N per seed, with summary.json and the report over seeds beside.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from continual import atomic, distributed
from continual.errors import RunError
from evaluation.report import COMPAT, REPORT, RESULTS, SUMMARY  # noqa: F401  (written by evaluation's outputs)

CONFIG, PREVIOUS_CONFIG = "config.yaml", "config.previous.yaml"
STATE, CHECKPOINT, TIMING = "state.json", "checkpoint.pt", "timing.json"
LOG, TENSORBOARD, MODULES = "run.log", "tensorboard", "modules"
FEWSHOT = "fewshot.json"  # a few-shot grid's cells (continual.fewshot)


class RunFolder:
    """A run folder (of one stream, a study or a run over seeds) and the paths inside it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    def setting(self, name: str) -> "RunFolder":
        """A study's folder for one setting."""
        return RunFolder(self.path / name)

    def seed(self, seed: int) -> "RunFolder":
        """A run over seeds: the folder of one seed's run."""
        return RunFolder(self.path / f"seed-{seed}")

    def module(self, index: int, task: str, method: str) -> str:
        """Where step ``index``'s module is saved, relative to the folder (as results.json records it)."""
        return f"{MODULES}/{index:02d}-{task}-{method}"

    @property
    def is_stream(self) -> bool:
        return (self.path / RESULTS).is_file()

    @property
    def is_over_seeds(self) -> bool:
        return (self.path / SUMMARY).is_file()

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())

    # -- starting a run ---------------------------------------------------------
    def prepare(self, resume: bool, overwrite: bool) -> str | None:
        """Refuse a folder holding a run unless asked (--resume, --overwrite); empty it for --overwrite.

        Returns the config text of the run to resume, None when there is none (``--resume`` into an empty or
        missing folder starts the run: cluster jobs are requeued with the same command line).
        """
        existing = self.path / CONFIG
        if existing.is_file() and not (resume or overwrite):
            raise RunError(f"{self.path} already holds a run; pass --resume to continue it or --overwrite to "
                           "start it again")
        if overwrite and self.path.exists() and distributed.is_main():
            shutil.rmtree(self.path)
        return existing.read_text() if existing.is_file() else None

    def record_config(self, config_text: str, previous: str | None) -> None:
        """config.yaml: the config the run goes on with; a different one it replaces is kept as
        config.previous.yaml."""
        if previous is not None and not same_config(previous, config_text):
            atomic.write_text(self.path / PREVIOUS_CONFIG, previous)
        atomic.write_text(self.path / CONFIG, config_text)

    @contextmanager
    def logging(self):
        """run.log: the engine's messages while the block runs. Rank 0's alone."""
        if not distributed.is_main():
            yield
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            stream = open(self.path / LOG, "a")
        except OSError as err:
            raise atomic.OutputError(f"{self.path / LOG}: cannot write ({err.strerror or err})") from err
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger("continual")
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)
            stream.close()

    @contextmanager
    def tensorboard(self):
        """A TensorBoard writer on rank 0 (None on the others), closed after the block."""
        if not distributed.is_main():
            yield None
            return
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.path / TENSORBOARD))
        try:
            yield writer
        finally:
            writer.close()

    def copy_module(self, source: "RunFolder", relative: str) -> None:
        """Another run's module folder copied here under the same relative path (rank 0 writes)."""
        if not distributed.is_main():
            return
        target = self.path / relative
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source.path / relative, tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)


def same_config(config_text: str, other_text: str) -> bool:
    """Whether two configs are the same, whatever their run folders (a run folder may be moved or copied)."""
    def strip(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if not line.startswith("run_dir:"))
    return strip(config_text) == strip(other_text)
