"""Which Snakemake processes are alive in a working directory; stale Snakemake locks.

Snakemake locks the files a run reads and writes by writing lists of them to
``.snakemake/locks/*.lock`` and removes them when it exits. A Snakemake process that is killed
(SIGKILL, the kernel's OOM killer, a reboot of the login node) leaves them behind, and the next
run stops with ``LockException``. The lock files cannot tell a dead owner from a live one; this
module can:

- every main Snakemake process of this workflow *claims* the directory: it creates
  ``.snakemake/jacreg-live/<host>-<pid>`` (what it is, as JSON) and holds an exclusive ``flock``
  on it for as long as it lives. The kernel releases the lock when the process dies, however
  it dies. A thread touches the file every :data:`HEARTBEAT` seconds.
- a claim whose lock can be taken is dead and is removed. On another host, where a file system
  without working ``flock`` (NFS mounted ``nolock``, Lustre ``localflock``) would show every lock
  as free, a claim also counts as alive while its heartbeat is younger than :data:`STALE_AFTER`.
- only when no other claim is alive are ``.snakemake/locks/*.lock`` stale:
  :func:`remove_stale_locks` removes them. While another Snakemake runs in the directory its locks
  stay, and Snakemake refuses a second run that needs the same files, as it always did.

Where ``flock`` is unavailable, nothing is claimed and no lock is ever removed.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LIVE_DIR = Path(".snakemake") / "jacreg-live"
LOCK_DIR = Path(".snakemake") / "locks"
HEARTBEAT = 30.0
STALE_AFTER = 120.0


@dataclass
class Claim:
    """This process's claim on a working directory, and what it found there."""

    path: Path
    handle: IO[str]
    others: list[dict] = field(default_factory=list)  # the other live Snakemake processes

    def release(self) -> None:
        """Remove the claim (at exit); the lock goes with the file."""
        if self.handle.closed:
            return
        if _same_file(self.path, self.handle):
            try:
                self.path.unlink()
            except OSError:
                pass
        self.handle.close()


_claims: list[Claim] = []  # kept for the process's lifetime: closing the file drops the lock


def _describe(path: Path, handle: IO[str]) -> dict:
    try:
        handle.seek(0)
        info = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        info = {}
    info.setdefault("file", path.name)
    return info


def _same_file(path: Path, handle: IO[str]) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _lock_own(path: Path) -> IO[str] | None:
    """Create ``path`` and hold an exclusive lock on it (retrying if a cleaner removed it)."""
    for _ in range(100):
        handle = open(path, "a+")  # noqa: SIM115 - held open for the process's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            handle.close()
            return None
        if _same_file(path, handle):
            return handle
        handle.close()
    return None


def others_alive(workdir: Path, own: Path | None = None, now: float | None = None) -> list[dict]:
    """The claims of other live Snakemake processes in ``workdir``; dead claims are removed."""
    now = time.time() if now is None else now
    host = socket.gethostname()
    alive = []
    live_dir = workdir / LIVE_DIR
    if not live_dir.is_dir():
        return alive
    for path in sorted(live_dir.iterdir()):
        if own is not None and path == own:
            continue
        try:
            handle = open(path)  # noqa: SIM115 - closed below
        except OSError:
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                alive.append(_describe(path, handle))
                continue
            except OSError:
                alive.append(_describe(path, handle))  # cannot tell: assume alive
                continue
            info = _describe(path, handle)
            try:
                age = now - os.fstat(handle.fileno()).st_mtime
            except OSError:
                age = STALE_AFTER + 1
            if info.get("host", host) != host and age < STALE_AFTER:
                alive.append(info)
                continue
            if _same_file(path, handle):
                try:
                    path.unlink()
                except OSError:
                    pass
    return alive


def _heartbeat(path: Path) -> None:
    while True:
        time.sleep(HEARTBEAT)
        try:
            os.utime(path)
        except OSError:
            return


def own_claim(workdir: Path | str = ".") -> Claim | None:
    """This process's claim on ``workdir``, if it made one."""
    live_dir = Path(workdir).resolve() / LIVE_DIR
    return next((c for c in _claims if c.path.parent == live_dir), None)


def claim(workdir: Path | str = ".", argv: list[str] | None = None) -> Claim | None:
    """Claim ``workdir`` for this process (idempotent); ``None`` where flock does not work."""
    workdir = Path(workdir).resolve()
    existing = own_claim(workdir)
    if existing is not None:
        existing.others = others_alive(workdir, own=existing.path)
        return existing
    live_dir = workdir / LIVE_DIR
    try:
        live_dir.mkdir(parents=True, exist_ok=True)
        path = live_dir / f"{socket.gethostname()}-{os.getpid()}"
        handle = _lock_own(path)
    except OSError:
        return None
    if handle is None:
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(argv if argv is not None else sys.argv),
    }))
    handle.flush()
    result = Claim(path, handle, others_alive(workdir, own=path))
    _claims.append(result)
    atexit.register(result.release)
    threading.Thread(target=_heartbeat, args=(path,), daemon=True,
                     name="jacreg-heartbeat").start()
    return result


def stale_locks(workdir: Path | str = ".") -> list[Path]:
    lock_dir = Path(workdir) / LOCK_DIR
    if not lock_dir.is_dir():
        return []
    return sorted(p for p in lock_dir.glob("*.lock") if p.is_file())


def remove_stale_locks(workdir: Path | str = ".", claim_: Claim | None = None) -> list[Path]:
    """Remove Snakemake's lock files if no other Snakemake process is alive in ``workdir``.

    ``claim_`` must be this process's claim (see :func:`claim`); without one nothing is removed.
    Returns the removed files.
    """
    if claim_ is None or claim_.others:
        return []
    removed = []
    for path in stale_locks(workdir):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def describe_other(info: dict) -> str:
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("started"):
        parts.append(f"since {info['started']}")
    if info.get("command"):
        parts.append(f"({info['command']})")
    return " ".join(parts)
