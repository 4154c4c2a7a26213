"""What a run produced, read back from its folder: ``Results.load(run_dir)``.

A stream's results.json becomes a ``StreamResults`` (its matrix, zero-shot
row, per-task metrics, derived metrics and per-step records); a study holds
one per setting, a run over seeds one ``Results`` per seed and the summary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from continual.errors import RunError
from continual.run_folder import RunFolder
from evaluation.report import SUMMARY, load_runs


@dataclass(frozen=True)
class StreamResults:
    """One stream's results (its results.json): ``matrix[i][j]`` is task j's primary metric after training
    task i (None where it was not evaluated), ``zero_shot[j]`` before any training."""

    name: str
    tasks: list[str]
    methods: list[str]
    policy: str
    metric_names: dict[str, str]  # task -> its primary metric (mAP, accuracy, vqa_accuracy)
    zero_shot: list[float]
    matrix: list[list[float | None]]
    derived: dict  # final_average, bwt, fwt, forgetting, retention, ... (evaluation.summary.derived_metrics)
    metrics: dict  # {"zero_shot": {task: every statistic}, "rows": [{task: every statistic}, ...]}
    steps: list[dict]  # per trained step: task, method, trainable_params, folder, train settings, final_loss
    held_out: dict
    raw: dict = field(repr=False)  # results.json as written

    @classmethod
    def from_json(cls, data: dict) -> "StreamResults":
        return cls(name=data["name"], tasks=data["tasks"], methods=data["methods"], policy=data["policy"],
                   metric_names=data["metric_names"], zero_shot=data["zero_shot"], matrix=data["matrix"],
                   derived=data["derived"], metrics=data["metrics"], steps=data["modules"],
                   held_out=data.get("held_out", {}), raw=data)

    def table(self) -> str:
        """The zero-shot row and the matrix as plain text, one row per line."""
        width = max(10, *(len(t) + 2 for t in self.tasks))
        cell = lambda v: f"{'-' if v is None else f'{v:.3f}':>{width}}"  # noqa: E731
        rows = [("zero-shot", self.zero_shot)] + [(f"after {t} ({m})", row) for t, m, row in
                                                  zip(self.tasks, self.methods, self.matrix)]
        header = f"{'':<28}" + "".join(f"{t:>{width}}" for t in self.tasks)
        return "\n".join([header] + [f"{label:<28}" + "".join(cell(v) for v in row) for label, row in rows])


@dataclass(frozen=True)
class Results:
    """A finished run: its streams (one, or a study's settings), or, over seeds, each seed's ``Results``
    and the summary (mean and 95% interval of every derived metric).

        results = continual.run(continual.load_config("configs/smoke.yaml"))
        results.matrix, results.derived["final_average"]
    """

    run_dir: Path
    streams: dict[str, StreamResults] = field(default_factory=dict)
    seeds: dict[int, "Results"] = field(default_factory=dict)
    summary: dict | None = None

    @classmethod
    def load(cls, run_dir: str | Path) -> "Results":
        """The results of a finished run folder (RunError if it holds none)."""
        folder = RunFolder(run_dir)
        if folder.is_over_seeds:
            summary = folder.read_json(SUMMARY)
            return cls(folder.path, seeds={s: cls.load(folder.seed(s).path) for s in summary["seeds"]},
                       summary=summary)
        return cls(folder.path, streams={name: StreamResults.from_json(data)
                                         for name, data in load_runs(folder.path).items()})

    @property
    def stream(self) -> StreamResults:
        """The run's one stream (RunError for a study or a run over seeds: pick from ``streams`` / ``seeds``)."""
        if len(self.streams) != 1:
            what = f"seeds {list(self.seeds)}" if self.seeds else f"streams {list(self.streams)}"
            raise RunError(f"{self.run_dir} holds {what}; choose one from .streams or .seeds")
        return next(iter(self.streams.values()))

    @property
    def matrix(self) -> list[list[float | None]]:
        return self.stream.matrix

    @property
    def zero_shot(self) -> list[float]:
        return self.stream.zero_shot

    @property
    def derived(self) -> dict:
        return self.stream.derived
