"""A stream's bookkeeping: what each step depends on (its identity), what it produced (``StepRecord``), and
state.json, which holds the finished steps and is checked against the config before a resumed run goes on.

Identities are digests of plain JSON: a step's training key covers the host's weights, the starting
modules, the data settings and every step up to it, so a mid-step checkpoint belongs to that step alone
and a study reuses a trained step only when its whole history matches.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from continual import atomic
from continual.config import NO_MODULE
from continual.errors import RunError
from prompts import build_module


@dataclass
class StepRecord:
    """What one stream step produced; state.json holds one per finished step."""

    index: int
    task: str
    method: str
    config: dict
    train: dict | None = None  # the TrainConfig it trained with (None: a `none` step)
    module: str | None = None  # its folder under the run folder
    trainable_params: int = 0
    fraction: float = 0.0
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    trunk_cache: dict = field(default_factory=dict)
    train_seconds: float | None = None
    metrics: dict[str, dict] = field(default_factory=dict)  # task -> every statistic of its evaluator
    reused_from: str | None = None  # the study setting whose identical step this copies


def digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def method_config(method: str, config: dict) -> dict:
    """A step's method config with the method's defaults filled in (so writing a default out changes nothing)."""
    return dict(config) if method == NO_MODULE else build_module(method, dict(config)).config_dict()


def difference(before, now, key: str = "") -> tuple[str, object, object] | None:
    """(dotted key, old value, new value) of the first difference between two JSON-like trees; None if equal."""
    if isinstance(before, dict) and isinstance(now, dict):
        for k in [*before, *(k for k in now if k not in before)]:
            found = difference(before.get(k), now.get(k), f"{key}.{k}" if key else str(k))
            if found:
                return found
        return None
    return None if before == now else (key, before, now)


@dataclass
class StreamState:
    """The finished part of one stream: its zero-shot row and its finished steps, as state.json holds them.

    ``identity``: what every row depends on; ``step_identity(i)``: what step i trains; ``tasks``: the
    evaluated tasks' configs (a task whose config changed is evaluated anew).
    """

    path: Path
    label: str  # where the stream's steps sit in the config: `stream` or `settings.NAME`
    zero_shot: dict[str, dict] = field(default_factory=dict)  # task -> metrics before any training
    records: list[StepRecord] = field(default_factory=list)

    def save(self, identity: dict, tasks: dict[str, dict]) -> None:
        atomic.write_json(self.path, {"identity": identity, "tasks": tasks, "zero_shot": self.zero_shot,
                                      "steps": [asdict(r) for r in self.records]})

    def load(self, identity: dict, tasks: dict[str, dict], step_identities: list[dict]) -> list[str]:
        """The finished steps of the file, checked against the config now: finished steps must be unchanged
        (RunError naming the step and the key); unfinished and appended steps may change. A task evaluated in
        finished rows whose config changed since, or a task new to the run, is not evaluated on those rows
        (null) and gets its zero-shot entry anew: those tasks are returned."""
        if not self.path.is_file():
            return []
        state = json.loads(self.path.read_text())
        if "identity" not in state:
            raise RunError(f"{self.path} was written by an older version that did not record what its steps "
                           "depend on; --overwrite starts the run over")
        records = [StepRecord(**r) for r in state["steps"]]
        for record in records:
            self._check_finished(record, state, identity, step_identities)
        same_run = not difference(state["identity"], identity)
        kept = {t for t, spec in tasks.items() if same_run and state["tasks"].get(t) == spec}
        for record in records:
            record.metrics = {t: m for t, m in record.metrics.items() if t in kept}
        self.zero_shot = {t: m for t, m in state["zero_shot"].items() if t in kept}
        self.records = records
        return sorted(set(tasks) - kept)

    def _check_finished(self, record: StepRecord, state: dict, identity: dict, step_identities: list[dict]) -> None:
        at, folder = f"{self.label}.{record.index}", self.path.parent
        if record.index >= len(step_identities):
            raise RunError(f"{folder}: {at} ({record.task}, {record.method}) has finished, but the config's "
                           f"{self.label} has {len(step_identities)} step(s); a finished step cannot be taken out "
                           "(--overwrite starts over)")
        before = {"run": state["identity"], "step": {"task": record.task, "method": record.method,
                                                     "config": method_config(record.method, record.config),
                                                     "train": record.train, "data": state["tasks"][record.task]}}
        changed = difference(before, {"run": identity, "step": step_identities[record.index]})
        if changed:
            key, old, new = changed
            where = {"run.host": "host (its weights' fingerprint)",
                     "run.start_from": "start_from (the modules' sha256)"}
            name = where.get(key) or key.replace("run.", "", 1).replace("step.data.", f"tasks.{record.task}.", 1) \
                .replace("step.", f"{at}.", 1)
            raise RunError(f"{folder}: {at} ({record.task}, {record.method}) has finished, and {name} changed "
                           f"since: {old!r} then, {new!r} now. Finished steps must keep their settings (unfinished "
                           "and appended steps may change); use another run_dir or --overwrite")
