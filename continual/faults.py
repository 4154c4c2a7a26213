"""Crash injection for the resume tests (as SQLite and etcd test their recovery).

``CONTINUAL_CRASH_AT=EVENT:N`` kills the process with SIGKILL at the N-th
occurrence of EVENT, exactly as an out-of-memory kill or a power cut would:
no handler, no cleanup. Events: ``train-step`` (after an optimizer step and its
checkpoint), ``eval-batch`` (after an evaluation minibatch),
``pretrain-validation`` (after a pretraining validation and its saved state),
and ``write:FILENAME`` (an atomic write of FILENAME whose temporary file is
complete but not yet renamed into place). With ``CONTINUAL_CRASH_MODE=raise``
the N-th occurrence raises ``SimulatedCrash`` instead, so a test can crash and
resume a run inside its own process (``reset()`` starts the count again).
Under torchrun, ``CONTINUAL_CRASH_RANK=R`` limits the crash to rank R (the
launcher's ``RANK``), as when one node of a job dies. ``CONTINUAL_CRASH_ONCE=PATH``
crashes only while PATH does not exist and creates it first, so the process
that takes the work over (a Ray task's retry, in a fresh worker whose count
starts again) runs through.
Unset, it costs one dict lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

_seen: Counter = Counter()


class SimulatedCrash(BaseException):
    """Raised at an injected crash point in ``raise`` mode; a BaseException, so no ``except Exception`` eats it."""


def reset() -> None:
    _seen.clear()


def crash_point(event: str) -> None:
    spec = os.environ.get("CONTINUAL_CRASH_AT")
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    rank = os.environ.get("RANK", "0")
    if name != event or os.environ.get("CONTINUAL_CRASH_RANK", rank) != rank:
        return
    _seen[event] += 1
    if _seen[event] == int(count):
        once = os.environ.get("CONTINUAL_CRASH_ONCE")
        if once:
            try:
                open(once, "x").close()
            except FileExistsError:
                return
        if os.environ.get("CONTINUAL_CRASH_MODE") == "raise":
            raise SimulatedCrash(spec)
        os.kill(os.getpid(), signal.SIGKILL)
