"""Your own model code: architectures named by import path, and which of them may be imported.

An architecture is either a name of the package's registry (``cnn_small``, ``cnn``,
``resnet18``) or an import path ``"package.module:factory"``: a callable that the pipeline calls
as ``factory(in_channels=C, num_classes=K, image_size=S, **arch_kwargs)`` and that returns an
``nn.Module`` mapping inputs in [0, 1] of shape (B, C, H, W) to logits (B, K). ``S`` is the side
of square images and ``(H, W)`` otherwise. The module is found in the folders of the config key
``models.code_dirs`` (relative to the directory Snakemake runs in) and then on ``sys.path``.

Checkpoints record the import path and its keyword arguments (:mod:`jacreg.models`). Importing a
module runs its code, so a checkpoint is only turned back into a model when its import path is
one the configuration names (``train.architecture``, ``train.overrides.<dataset>.architecture``,
``models.pretrained.<dataset>.architecture``): any other is refused *before* anything is
imported. The command-line entry points receive that list from the workflow
(``jacreg --allow-architecture ... --code-dir ...``) and install it with :func:`trust`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
IMPORT_PATH = re.compile(rf"^{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}(\.{_IDENTIFIER})*$")
#: keyword arguments every factory receives from the data; the config may not set them
DATA_KWARGS = ("in_channels", "num_classes", "image_size")


class UntrustedArchitectureError(ValueError):
    """A checkpoint names an import path the configuration does not name; nothing was imported."""


@dataclass(frozen=True)
class Trust:
    """The import paths this process may import, and the folders searched first for them."""

    architectures: frozenset[str] = frozenset()
    code_dirs: tuple[Path, ...] = ()


_TRUST = Trust()


def trust(architectures: Iterable[str], code_dirs: Iterable[str | Path] = ()) -> None:
    """Install the process-wide allow-list (the CLI does this from its global options)."""
    global _TRUST
    _TRUST = Trust(frozenset(architectures), tuple(Path(d) for d in code_dirs))


def trusted() -> Trust:
    """The process-wide allow-list installed by :func:`trust` (empty by default)."""
    return _TRUST


def is_import_path(architecture: str) -> bool:
    """True for ``"package.module:factory"``; False for a registry name."""
    return ":" in architecture


def config_architectures(config: Mapping[str, Any]) -> list[str]:
    """Every import path the configuration names, sorted (registry names left out)."""
    train = config.get("train") or {}
    names = [train.get("architecture")]
    names += [o.get("architecture") for o in (train.get("overrides") or {}).values()]
    pretrained = (config.get("models") or {}).get("pretrained") or {}
    names += [entry.get("architecture") for entry in pretrained.values()]
    return sorted({n for n in names if isinstance(n, str) and is_import_path(n)})


def config_code_dirs(config: Mapping[str, Any]) -> list[str]:
    """``models.code_dirs`` of the configuration."""
    return list((config.get("models") or {}).get("code_dirs") or [])


def _split(import_path: str) -> tuple[str, str]:
    if not IMPORT_PATH.match(import_path):
        raise ValueError(f"architecture {import_path!r} is neither a registry name nor an import "
                         "path 'package.module:factory'")
    module, attribute = import_path.split(":", 1)
    return module, attribute


def locate(import_path: str, code_dirs: Iterable[str | Path] = ()) -> Path | None:
    """The file of the module of ``import_path``, found without importing anything; None when
    neither the code folders nor ``sys.path`` hold it."""
    module, _ = _split(import_path)
    parts = module.split(".")
    # the jobs run ``python -m jacreg.cli`` in the working directory, which is then on sys.path
    for folder in [*map(Path, code_dirs), Path.cwd(), *(Path(p) for p in sys.path if p)]:
        base = folder.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    if len(parts) == 1:  # an installed extension module or a namespace package
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(module)
            if spec is not None:
                return Path(spec.origin or module)
    return None


@contextlib.contextmanager
def _search_path(code_dirs: Iterable[Path]) -> Iterator[None]:
    added = [str(Path(d).resolve()) for d in code_dirs]
    before = list(sys.path)
    sys.path[:0] = added
    try:
        yield
    finally:
        sys.path[:] = before


def load_factory(import_path: str, allowed: Iterable[str] | None = None,
                 code_dirs: Iterable[str | Path] | None = None,
                 origin: str = "architecture") -> Callable[..., Any]:
    """Import ``package.module`` and return its ``factory`` attribute.

    ``allowed`` (default: the process-wide list of :func:`trust`) must contain ``import_path``;
    otherwise :class:`UntrustedArchitectureError` is raised before anything is imported.
    ``origin`` names where the import path came from, for the messages.
    """
    state = trusted()
    allowed = frozenset(state.architectures if allowed is None else allowed)
    dirs = tuple(Path(d) for d in (state.code_dirs if code_dirs is None else code_dirs))
    if import_path not in allowed:
        named = ", ".join(sorted(allowed)) or "none"
        raise UntrustedArchitectureError(
            f"{origin}: refused: architecture {import_path!r} is not named by the configuration "
            f"(import paths it names: {named}; config keys train.architecture, "
            "train.overrides.<dataset>.architecture, models.pretrained.<dataset>.architecture); "
            "its module was not imported")
    module_name, attribute = _split(import_path)
    try:
        with _search_path(dirs):
            module = importlib.import_module(module_name)
    except ImportError as error:
        where = ", ".join(str(d) for d in dirs) or "no models.code_dirs"
        raise ValueError(f"{origin}: cannot import module {module_name!r} of architecture "
                         f"{import_path!r} ({error}); searched {where}, then sys.path") from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{origin}: module {module_name!r} ({getattr(module, '__file__', '')})"
                             f" has no attribute {attribute!r} (architecture {import_path!r})")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{origin}: {import_path!r} is not callable")
    return target
