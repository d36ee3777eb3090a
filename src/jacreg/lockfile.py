"""The pinned environment: parse ``requirements.lock`` and compare it with the running interpreter.

``requirements.lock`` (written by ``scripts/update-lock.sh`` with ``uv pip compile
--generate-hashes``) pins every package, with hashes, for one target: CPython 3.11 on Linux
x86_64. The Quickstart installs exactly it. :func:`lock_status` says whether the interpreter that
runs this code has exactly the locked versions; it is recorded as ``environment.lock`` in
``metrics.json`` and shown in the report's provenance through :func:`describe`::

    {"lock_file": "requirements.lock", "lock_sha256": "…", "matches_lock": true,
     "differences": [], "target": "python 3.11, x86_64-unknown-linux-gnu", "on_target": true}

Each difference is ``{"name", "locked", "installed"}``: ``installed`` is ``None`` for a locked
package that is missing, ``locked`` is ``None`` for an installed package the lock does not name.
Locked entries whose environment marker does not hold here are ignored, and so are the project
itself (installed editable, outside the lock) and pip (the installer every venv starts with).
``on_target`` says whether this interpreter is the lock's target (Python version and platform
from the compile command in the lock's header): elsewhere, differences are expected.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

LOCK_NAME = "requirements.lock"
#: The project itself (installed editable by the Quickstart, outside the lock) and the installer.
IGNORED = frozenset({"jacreg", "pip"})
#: An environment variable naming another lock file to compare with.
LOCK_ENV = "JACREG_LOCK_FILE"

_HASH = re.compile(r"--hash=(?P<algo>\w+):(?P<digest>[0-9a-fA-F]+)")


def canonical_name(name: str) -> str:
    """PEP 503 normalized project name: ``Ruamel.YAML`` and ``ruamel_yaml`` → ``ruamel-yaml``."""
    return str(canonicalize_name(name))


def _pinned(spec: str) -> tuple[str, str, str | None]:
    """(canonical name, version, marker) of a ``name[extras]==version [; marker]`` line, parsed
    by :class:`packaging.requirements.Requirement` (PEP 508). The version and the marker are
    kept as the lock writes them. Anything but exactly one ``==`` pin raises ValueError."""
    try:
        req = Requirement(spec)
    except InvalidRequirement as err:
        raise ValueError(f"not a pinned requirement (name==version) in the lock: {spec!r} "
                         f"({err})") from None
    pins = list(req.specifier)
    if req.url or len(pins) != 1 or pins[0].operator != "==" or "*" in pins[0].version:
        raise ValueError(f"not a pinned requirement (name==version) in the lock: {spec!r}")
    marker = spec.split(";", 1)[1].strip() if req.marker is not None else None
    return canonical_name(req.name), pins[0].version, marker


@dataclass(frozen=True)
class LockedPackage:
    """One ``name==version [; marker]`` entry of the lock, with its hashes and ``# via`` lines."""

    name: str  # canonical
    version: str
    marker: str | None = None
    hashes: tuple[str, ...] = ()
    via: tuple[str, ...] = field(default=())


def parse_lock(text: str) -> list[LockedPackage]:
    """The entries of a pip-compile / ``uv pip compile`` style lock, in file order.

    Continuation lines (``\\``) are joined; ``--hash=`` options are collected; the ``# via``
    annotations below an entry (one line, or a ``# via`` line followed by ``#   name`` lines)
    are kept as :attr:`LockedPackage.via`. Option lines (``--index-url`` …) are skipped. A
    requirement that is not pinned with ``==`` raises :class:`ValueError`: a lock pins.
    """
    entries: list[dict[str, Any]] = []
    in_via = False
    logical = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if logical or (stripped and not stripped.startswith("#")):
            logical += " " + stripped.rstrip("\\").strip() if logical else stripped.rstrip("\\")
            if stripped.endswith("\\"):
                continue
            line, logical = logical.strip(), ""
            in_via = False
            if line.startswith("-"):
                continue  # a pip option line (--index-url, -c …)
            hashes = tuple(f"{m['algo']}:{m['digest'].lower()}" for m in _HASH.finditer(line))
            name, version, marker = _pinned(_HASH.sub("", line).strip())
            entries.append({"name": name, "version": version, "marker": marker,
                            "hashes": hashes, "via": []})
            continue
        if not entries or not stripped.startswith("#"):
            in_via = False
            continue
        comment = stripped.lstrip("#").strip()
        if comment == "via" or comment.startswith("via "):
            rest = comment[3:].strip()
            if rest:
                entries[-1]["via"].append(rest)
                in_via = False
            else:
                in_via = True
        elif in_via and comment:
            entries[-1]["via"].append(comment)
        else:
            in_via = False
    return [LockedPackage(e["name"], e["version"], e["marker"], e["hashes"], tuple(e["via"]))
            for e in entries]


def lock_target(text: str) -> dict[str, str]:
    """``--python-version`` / ``--python-platform`` of the compile command in the lock's header."""
    target: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        words = line.lstrip("#").split()
        if "compile" not in words:
            continue
        try:
            words = shlex.split(line.lstrip("#"))
        except ValueError:
            pass
        for i, word in enumerate(words):
            for flag in ("--python-version", "--python-platform"):
                if word == flag and i + 1 < len(words):
                    target[flag[2:]] = words[i + 1]
                elif word.startswith(flag + "="):
                    target[flag[2:]] = word.split("=", 1)[1]
    return target


def marker_applies(marker: str | None, environment: Mapping[str, str] | None = None) -> bool:
    """Whether an environment marker holds for the running interpreter (or ``environment``)."""
    if not marker:
        return True
    return Marker(marker).evaluate(dict(environment) if environment is not None else None)


def locked_versions(packages: Iterable[LockedPackage],
                    environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{canonical name: version}`` of the entries whose marker holds here."""
    return {p.name: p.version for p in packages if marker_applies(p.marker, environment)}


def installed_versions() -> dict[str, str]:
    """``{canonical name: version}`` of the distributions the running interpreter sees.

    When one name is installed twice on ``sys.path``, the first one (the one imported) counts.
    """
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            found.setdefault(canonical_name(name), dist.version)
    return found


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)  # "1.0" == "1.0.0"; "2.4.1+cpu" != "2.4.1"
    except InvalidVersion:
        return a == b


def compare(locked: Mapping[str, str], installed: Mapping[str, str],
            ignore: Iterable[str] = IGNORED) -> list[dict[str, str | None]]:
    """Every package whose installed version differs from the lock's, sorted by name.

    ``installed`` is ``None`` for a locked package that is not installed; ``locked`` is ``None``
    for an installed package that the lock does not name.
    """
    skip = {canonical_name(n) for n in ignore}
    locked = {canonical_name(k): v for k, v in locked.items()}
    installed = {canonical_name(k): v for k, v in installed.items()}
    differences: list[dict[str, str | None]] = []
    for name in sorted((set(locked) | set(installed)) - skip):
        want, have = locked.get(name), installed.get(name)
        if want is None or have is None or not _same_version(want, have):
            differences.append({"name": name, "locked": want, "installed": have})
    return differences


def default_lock_path() -> Path | None:
    """``$JACREG_LOCK_FILE``, else ``requirements.lock`` at the root of this source checkout."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    candidate = Path(__file__).resolve().parents[2] / LOCK_NAME  # src/jacreg/lockfile.py
    return candidate if candidate.is_file() else None


def _display_path(path: Path) -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def _describe_target(target: Mapping[str, str]) -> str:
    parts = []
    if target.get("python-version"):
        parts.append(f"python {target['python-version']}")
    if target.get("python-platform"):
        parts.append(target["python-platform"])
    return ", ".join(parts)


def on_target(target: Mapping[str, str]) -> bool | None:
    """Whether the running interpreter is the one the lock was compiled for (``None``: unknown).

    ``python-version`` ``3.11`` matches any CPython 3.11.x; ``python-platform`` is uv's target
    triple (``x86_64-unknown-linux-gnu``, ``aarch64-apple-darwin``, …) or short name (``linux``).
    """
    if not target:
        return None
    ok = True
    if target.get("python-version"):
        running = ".".join(map(str, sys.version_info[:3]))
        want = SpecifierSet(f"=={target['python-version']}.*")  # 3.11 → 3.11.x; 3.11.7 → itself
        ok &= sys.implementation.name == "cpython" and want.contains(running)
    if target.get("python-platform"):
        arch, _, rest = target["python-platform"].partition("-")
        system = {"linux": "linux", "darwin": "darwin", "macos": "darwin", "windows": "win32"}
        os_name = next((v for k, v in system.items() if k in target["python-platform"]), None)
        if rest:  # a triple: arch-vendor-os
            machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64",
                                                                                    "aarch64")
            ok &= machine == arch.replace("arm64", "aarch64")
        ok &= os_name is None or sys.platform.startswith(os_name)
    return ok


def lock_status(path: str | Path | None = None, installed: Mapping[str, str] | None = None,
                environment: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Compare the lock with the running interpreter's packages (or ``installed``).

    ``matches_lock`` is ``None`` and ``differences`` empty when there is no lock to compare with
    (the package installed from a wheel, outside this repository).
    """
    lock_path = Path(path) if path is not None else default_lock_path()
    if lock_path is None or not lock_path.is_file():
        return {"lock_file": None if lock_path is None else _display_path(lock_path),
                "lock_sha256": None, "target": None, "on_target": None, "matches_lock": None,
                "differences": []}
    data = lock_path.read_bytes()
    text = data.decode("utf-8")
    locked = locked_versions(parse_lock(text), environment)
    differences = compare(locked, installed_versions() if installed is None else installed)
    target = lock_target(text)
    return {"lock_file": _display_path(lock_path),
            "lock_sha256": hashlib.sha256(data).hexdigest(),
            "target": _describe_target(target) or None, "on_target": on_target(target),
            "matches_lock": not differences, "differences": differences}


def describe(status: Mapping[str, Any] | None, limit: int = 12) -> str:
    """One line for the report: ``matches the lock (requirements.lock)`` or what differs.

    At most ``limit`` differences are named (``name locked→installed``), then ``… N more``.
    """
    if not status or status.get("matches_lock") is None:
        where = (status or {}).get("lock_file")
        return f"not checked: no lock file{f' at {where}' if where else ''}"
    lock = status.get("lock_file") or LOCK_NAME
    if status["matches_lock"]:
        return f"matches the lock ({lock})"
    differences = status.get("differences") or []
    items = [f"{d['name']} {d.get('locked') or 'not locked'}→"
             f"{d.get('installed') or 'not installed'}" for d in differences[:limit]]
    n = len(differences)
    if n > limit:
        items.append(f"… {n - limit} more")
    target = (f"; the lock is for {status['target']}, not this interpreter"
              if status.get("target") and status.get("on_target") is False else "")
    return (f"differs from the lock ({lock}) in {n} package{'s' if n != 1 else ''}: "
            + ", ".join(items) + target)
