"""Checks on disk, before any job: your own data, model code and checkpoints (docs/custom.md).

The workflow calls :func:`preflight` while it reads the configuration (``rules/common.smk``),
after the schema check: a bad ``.npz`` or image folder, a missing code folder, a module that is
nowhere to be found or a missing checkpoint file stops the run with a message naming the config
key, the file and the problem, before Snakemake plans a job or writes anything under
``results/``. It imports neither torch nor your modules (except torchvision, for a torchvision
dataset that still needs preparing), so it adds well under a second to a run whose data is
already prepared.
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


def preflight(config: Mapping[str, Any], prepared_dir: str | Path = "data/prepared") -> None:
    """Raise :class:`PreflightError` listing every problem (see the module docstring)."""
    data = config.get("data") or {}
    custom = data.get("custom") or {}
    problems: list[str] = []
    for name in config["datasets"]:
        entry = custom.get(name)
        if entry is None or not needs_preparing(entry, Path(prepared_dir) / f"{name}.pt"):
            continue
        try:
            check_source(name, entry, (data.get("sources") or {}).get(name),
                         (data.get("digests") or {}).get(name))
        except ValueError as error:
            problems.append(str(error))
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
