"""Configuration: JSON-schema validation with messages that name the key path.

The workflow calls :func:`validate_config` on the merged configuration (``config.yaml`` plus any
``--configfile``) before Snakemake plans a single job, so a typo or an out-of-range value stops
the run with a message such as ``config key 'lambdas[1]': -0.1 is less than the minimum of 0``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration violates the schema; the message lists every violation."""


def load_schema(path: Path | None = None) -> dict[str, Any]:
    """Read the JSON schema (YAML syntax) that the configuration must satisfy."""
    path = Path(path) if path is not None else SCHEMA_PATH
    with open(path) as handle:
        return yaml.safe_load(handle)


def _key_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        unknown = sorted(
            key for key in error.instance
            if key not in known and not any(re.search(p, key) for p in patterns)
        )
        allowed = sorted(known) + [f"keys matching {p}" for p in patterns]
        return (
            f"config key '{_key_path(path)}': unknown key(s) {unknown}; allowed: "
            f"{', '.join(allowed)}"
        )
    if error.validator == "type":
        return (
            f"config key '{_key_path(path)}': {error.instance!r} has the wrong type; "
            f"expected {error.validator_value}"
        )
    if error.validator == "enum":
        return (
            f"config key '{_key_path(path)}': {error.instance!r} is not allowed; "
            f"allowed values: {', '.join(map(str, error.validator_value))}"
        )
    if error.validator == "pattern" and "description" in error.schema:
        return (
            f"config key '{_key_path(path)}': {error.instance!r} is not allowed; allowed: "
            f"{error.schema['description'].strip()} (pattern {error.validator_value})"
        )
    if error.validator in ("not", "oneOf") and "description" in error.schema:
        return (
            f"config key '{_key_path(path)}': {error.instance!r} is not allowed; "
            f"allowed: {error.schema['description']}"
        )
    return f"config key '{_key_path(path)}': {error.message}"


def validate_config(config: Mapping[str, Any], schema: dict[str, Any] | None = None) -> None:
    """Raise :class:`ConfigError` listing every schema violation and cross-key inconsistency."""
    schema = schema if schema is not None else load_schema()
    replaced = _replaced_keys(config)
    if replaced:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(replaced))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    messages = [_describe(e) for e in errors]
    if not messages:
        for dataset in config["datasets"]:
            if dataset not in config["epsilons"]:
                messages.append(
                    f"config key 'epsilons.{dataset}': missing; every dataset in 'datasets' "
                    "needs a list of eps values in (0, 1]"
                )
        names = [format_lambda(lam) for lam in config["lambdas"]]
        if len(set(names)) != len(names):
            messages.append(
                f"config key 'lambdas': values {config['lambdas']} collide in file names "
                f"{names}; use values that differ in their first 12 significant digits"
            )
        messages += dataset_problems(config)
        target = config["attack"].get("target_class")
        custom = (config.get("data") or {}).get("custom") or {}
        if target is not None and target >= 10 and not all(d in custom
                                                            for d in config["datasets"]):
            messages.append(
                f"config key 'attack.target_class': {target} is out of range; allowed: "
                "null or a class index 0-9"
            )
    if messages:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(messages))


TORCHVISION_BUILTINS = ("mnist", "fashion_mnist", "cifar10")  # the datasets data.sources serves


def dataset_problems(config: Mapping[str, Any]) -> list[str]:
    """Cross-key checks of your own datasets and models (docs/custom.md): every dataset named
    anywhere is built in or defined under ``data.custom``; per-format keys; ``arch_kwargs`` only
    with import paths; ``models.pretrained`` covers exactly the grid of lambdas and seeds."""
    from jacreg.custom_data import BUILTIN_DATASETS, entry_problems
    from jacreg.user_code import DATA_KWARGS, is_import_path

    data = config.get("data") or {}
    custom = data.get("custom") or {}
    messages: list[str] = []
    for name, entry in custom.items():
        messages += entry_problems(name, entry)
    known = [*BUILTIN_DATASETS, *custom]
    unknown = (f"is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) nor defined "
               "under 'data.custom'")
    for i, name in enumerate(config["datasets"]):
        if name not in known:
            messages.append(f"config key 'datasets[{i}]': {name!r} {unknown}")
    for key, names in (("epsilons", config["epsilons"]),
                       ("train.overrides", config["train"].get("overrides") or {})):
        for name in names:
            if name not in known:
                messages.append(f"config key '{key}.{name}': {name!r} {unknown}")
    served = [*TORCHVISION_BUILTINS,
              *(n for n, e in custom.items() if e.get("format") == "torchvision")]
    for key in ("sources", "digests"):
        odd = sorted(set(data.get(key) or {}) - set(served))
        if odd:
            messages.append(f"config key 'data.{key}': unknown key(s) {odd}; allowed: the "
                            f"datasets read by torchvision: {', '.join(served)} (your own: "
                            "data.custom entries of format torchvision)")
    pretrained = (config.get("models") or {}).get("pretrained") or {}
    for name in config["datasets"]:
        settings = train_settings(config, name)
        if name in pretrained:
            settings = dict(pretrained[name])
        where = (f"models.pretrained.{name}" if name in pretrained
                 else f"train.overrides.{name}" if name in (config["train"].get("overrides") or {})
                 else "train")
        kwargs = settings.get("arch_kwargs") or {}
        clash = sorted(set(kwargs) & set(DATA_KWARGS))
        if clash:
            messages.append(f"config key '{where}.arch_kwargs': {clash} come from the data; "
                            "remove them")
        if kwargs and not is_import_path(settings["architecture"]):
            messages.append(f"config key '{where}.arch_kwargs': applies to import-path "
                            f"architectures only, not to {settings['architecture']!r}")
    grid = {(format_lambda(lam), int(seed))
            for lam in config["lambdas"] for seed in config["seeds"]}

    def pairs(items: list[tuple[str, int]]) -> str:
        return ", ".join(f"(lambda {lam}, seed {seed})" for lam, seed in items)

    for name, entry in pretrained.items():
        key = f"config key 'models.pretrained.{name}'"
        if name not in config["datasets"]:
            messages.append(f"{key}: {name!r} is not in 'datasets'")
        given = [(format_lambda(c["lambda"]), int(c["seed"])) for c in entry["checkpoints"]]
        twice = sorted({g for g in given if given.count(g) > 1})
        missing, extra = sorted(grid - set(given)), sorted(set(given) - grid)
        if twice:
            messages.append(f"{key}.checkpoints: more than one file for {pairs(twice)}")
        if missing:
            messages.append(f"{key}.checkpoints: no file for {pairs(missing)}; give one per "
                            "lambda and seed of the config")
        if extra:
            messages.append(f"{key}.checkpoints: {pairs(extra)} not in the config's lambdas "
                            "and seeds")
    return messages


def _replaced_keys(config: Mapping[str, Any]) -> list[str]:
    """Messages for keys of older versions, saying what replaced them."""
    data = config.get("data")
    messages = []
    if isinstance(data, Mapping) and "mirror" in data:
        messages.append(
            "config key 'data.mirror' was replaced by 'data.sources': one source per dataset, "
            "e.g. data: {sources: {fashion_mnist: /usr/share/datasets/fashion-mnist, "
            "mnist: https://example.org/mnist/}} (an http(s) base URL, a local directory or a "
            "file:// URL; null: torchvision's mirrors); see docs/datasets.md")
    if isinstance(data, Mapping) and "checksums" in data:
        messages.append(
            "config key 'data.checksums' (md5 of the archives) was replaced by 'data.digests': "
            "the content is checked, not the packaging: {dataset: {file name: SHA-256 of the "
            "decompressed file}}, and the official releases' digests are built in; "
            "see docs/datasets.md")
    return messages


def train_settings(config: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """The training settings of one dataset: ``train`` with its per-dataset overrides applied."""
    base = {k: v for k, v in config["train"].items() if k != "overrides"}
    override = config["train"].get("overrides", {}).get(dataset, {})
    if "architecture" in override and "arch_kwargs" not in override:
        base.pop("arch_kwargs", None)  # they belong to the architecture it replaces
    base.update(override)
    base.setdefault("weight_decay", 0.0)
    base.setdefault("augment", False)
    base.setdefault("schedule", "constant")
    return base


def format_lambda(value: float) -> str:
    """Stable text form of a regularization strength for file names: 0 -> '0', 0.01 -> '0.01'.

    Twelve significant digits: distinct lambdas in a config keep distinct names (checked).
    """
    return format(float(value), ".12g")


def config_sha256(config: Mapping[str, Any]) -> str:
    """SHA-256 of the configuration serialized canonically (sorted keys)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
