"""Checks on disk, before any job: your own data, model code and checkpoints (docs/custom.md).

The workflow calls :func:`preflight` while it reads the configuration (``rules/common.smk``),
after the schema check: a bad ``.npz`` or image folder, a missing code folder, a module that is
nowhere to be found or a missing checkpoint file stops the run with a message naming the config
key, the file and the problem, before Snakemake plans a job or writes anything under
``results/``. It imports neither torch nor your modules (except torchvision, for a torchvision
dataset that still needs preparing, and torch to read the classes a prepared dataset records
when ``attack.target_class`` is set), so it adds well under a second to a run whose data is
already prepared.

``attack.target_class`` is checked here against each custom dataset's number of classes K, read
from the data (``config.py`` checks it against the built-ins' 10). Where K is known only once a
torchvision class has been downloaded (no ``class_names`` in the entry), the attack job checks it
with the same message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jacreg.config import format_lambda
from jacreg.custom_data import check_source, needs_preparing
from jacreg.user_code import config_architectures, config_code_dirs, locate


class PreflightError(ValueError):
    """Something the configuration names is missing or unusable; the message says what."""


def pretrained_files(config: Mapping[str, Any]) -> dict[str, dict[tuple[str, int], str]]:
    """``models.pretrained`` as dataset -> (lambda as in file names, seed) -> state-dict file."""
    entries = (config.get("models") or {}).get("pretrained") or {}
    return {name: {(format_lambda(c["lambda"]), int(c["seed"])): str(c["path"])
                   for c in entry["checkpoints"]}
            for name, entry in entries.items()}


def target_class_problem(target: int, dataset: str, n_classes: int, origin: str) -> str:
    """The message for an ``attack.target_class`` outside a dataset's classes 0..K-1."""
    return (f"config key 'attack.target_class': {target} is out of range for dataset "
            f"{dataset!r} ({n_classes} classes, {origin}); allowed: null or a class index "
            f"0-{n_classes - 1}")


def prepared_classes(path: Path) -> int | None:
    """The number of classes a prepared custom dataset records; None when the file does not
    say (the jobs that read it then report the file)."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable here: load_prepared names the problem
        return None
    spec = payload.get("spec") if isinstance(payload, dict) else None
    classes = spec.get("classes") if isinstance(spec, dict) else None
    return len(classes) if isinstance(classes, list) else None


def preflight(config: Mapping[str, Any], prepared_dir: str | Path = "data/prepared") -> None:
    """Raise :class:`PreflightError` listing every problem (see the module docstring)."""
    data = config.get("data") or {}
    custom = data.get("custom") or {}
    target = (config.get("attack") or {}).get("target_class")
    problems: list[str] = []
    for name in config["datasets"]:
        entry = custom.get(name)
        if entry is None:
            continue
        prepared = Path(prepared_dir) / f"{name}.pt"
        if needs_preparing(entry, prepared):
            try:
                n_classes = check_source(name, entry, (data.get("sources") or {}).get(name),
                                         (data.get("digests") or {}).get(name))
            except ValueError as error:
                problems.append(str(error))
                continue
            origin = (f"read from {entry['path']}" if entry.get("path")
                      else f"from 'data.custom.{name}.class_names'")
        elif target is not None:
            n_classes, origin = prepared_classes(prepared), f"recorded in {prepared}"
        else:
            continue
        if target is not None and n_classes is not None and target >= n_classes:
            problems.append(target_class_problem(target, name, n_classes, origin))
    code_dirs = config_code_dirs(config)
    for folder in code_dirs:
        if not Path(folder).is_dir():
            problems.append(f"config key 'models.code_dirs': {folder!r} is not a folder "
                            f"(looked for {Path(folder).resolve()})")
    for architecture in config_architectures(config):
        if locate(architecture, code_dirs) is None:
            module = architecture.split(":", 1)[0]
            where = ", ".join(code_dirs) or "no models.code_dirs"
            problems.append(f"architecture {architecture!r}: module {module!r} not found (searched "
                            f"{where}, then sys.path); put its folder under 'models.code_dirs' "
                            "or install its package")
    for name, files in pretrained_files(config).items():
        for (lam, seed), path in sorted(files.items()):
            if not Path(path).is_file():
                problems.append(f"config key 'models.pretrained.{name}.checkpoints': no file "
                                f"{path} (lambda {lam}, seed {seed})")
    if problems:
        raise PreflightError("\n".join(problems))
