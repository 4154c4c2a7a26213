"""Crash injection for the resume tests (as SQLite and etcd test their recovery).

``CONTINUAL_CRASH_AT=EVENT:N`` kills the process with SIGKILL at the N-th
occurrence of EVENT, exactly as an out-of-memory kill or a power cut would:
no handler, no cleanup. Events: ``train-step`` (after an optimizer step and its
checkpoint), ``eval-batch`` (after an evaluation minibatch), and
``write:FILENAME`` (an atomic write of FILENAME whose temporary file is
complete but not yet renamed into place). Unset, it costs one dict lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

_seen: Counter = Counter()


def crash_point(event: str) -> None:
    spec = os.environ.get("CONTINUAL_CRASH_AT")
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    if name != event:
        return
    _seen[event] += 1
    if _seen[event] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
