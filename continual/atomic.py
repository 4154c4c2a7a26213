"""Atomic file writes: a temporary sibling, fsync, then a rename, so a crash leaves the old file or the new one.

In a job of several processes only rank 0 writes; the other ranks compute the
same outputs and their writes are skipped (continual.distributed).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from continual import distributed
from continual.faults import crash_point
from continual.errors import ContinualError


class OutputError(ContinualError, OSError):
    """An output that cannot be written (unwritable folder, full disk)."""


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    if not distributed.is_main():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            crash_point(f"write:{path.name}")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or err}); the previous version, if any, is intact") \
            from err
    return path


def write_torch(path: str | Path, value) -> Path:
    """``torch.save`` of ``value``, written atomically (checkpoints and resumable states)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return write_bytes(path, buffer.getvalue())


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | Path, value) -> Path:
    return write_text(path, json.dumps(value, indent=2) + "\n")


def write_files(folder: str | Path, files: dict[str, bytes | str]) -> None:
    """Write {relative path: content} under ``folder``, each file atomically."""
    for name, content in files.items():
        write_bytes(Path(folder) / name, content.encode() if isinstance(content, str) else content)


@contextmanager
def replaced_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling to fill; when the block ends normally it takes ``folder``'s place.

    A crash leaves the old folder (or, for an instant during the swap, its
    backup beside it), never a half-written one under the name. On a rank
    other than 0 the folder filled is a scratch one, removed afterwards.
    """
    folder = Path(folder)
    if not distributed.is_main():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)
        return
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()  # not mkdtemp: the folder keeps the umask's permissions once renamed
    except OSError as err:
        raise OutputError(f"{folder}: cannot write ({err.strerror or err})") from err
    try:
        yield tmp
        if folder.exists():
            old = folder.with_name(f"{tmp.name}-old")
            os.rename(folder, old)
            os.rename(tmp, folder)
            shutil.rmtree(old)
        else:
            os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
