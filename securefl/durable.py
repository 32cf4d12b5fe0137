"""Durable file writes: the one place that says how securefl puts a file on
disk so that a crash (SIGKILL, power loss) never leaves half of it.

* :func:`atomic_write` writes a whole file through a temporary file in the
  same directory, flushes and fsyncs it, renames it over the target with
  ``os.replace`` and fsyncs the directory: a reader sees the old file or the
  new one, never a mix, and after it returns the new one survives a crash.
* :func:`fsync_dir` makes a directory entry (a created or renamed file)
  durable; append-only files (the privacy ledger) use it after creation.

Stray temporaries of an interrupted write are named ``.<name>-*.tmp``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_dir"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync the directory ``path`` (best effort: platforms that cannot open
    a directory, or refuse to fsync one, are skipped silently)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` with what ``write`` writes to a binary handle,
    atomically and durably (see the module docstring).

    Raises:
        OSError: when it cannot be written; ``path`` is then unchanged and no
            temporary file is left behind.  Whatever ``write`` raises
            propagates, with the same guarantee.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
