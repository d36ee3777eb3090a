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
    if error.validator == "not" and "description" in error.schema:
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
        target = config["attack"].get("target_class")
        if target is not None and target >= 10:
            messages.append(
                f"config key 'attack.target_class': {target} is out of range; allowed: "
                "null or a class index 0-9"
            )
    if messages:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(messages))


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
    base.update(config["train"].get("overrides", {}).get(dataset, {}))
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
