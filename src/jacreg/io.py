"""Atomic file output and weights-only tensor loading.

Every artifact is written to a temporary file in the destination folder, flushed, fsync'ed and
renamed over the destination (``os.replace`` is atomic on POSIX). A job killed mid-write leaves
at most a stray ``.tmp`` file, never a truncated checkpoint, UAP or metrics file that a later
step would accept, and a failing write never destroys the good file already there.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path``; on success fsync and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise OSError(error.errno, f"could not write {path} ({error.strerror or error}); "
                      "the previous version, if any, is intact") from error
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`atomic_open`."""
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def load_torch(path: str | os.PathLike[str]) -> Any:
    """Load tensors and plain containers only (``weights_only=True``): no code runs on load."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError for disallowed globals
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        raise ValueError(
            f"{path}: refused to load: not a weights-only tensor file "
            f"({error.__class__.__name__}: {reason})"
        ) from error


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write indented, key-sorted JSON atomically."""
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path) as handle:
        return json.load(handle)
