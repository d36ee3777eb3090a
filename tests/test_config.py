"""Tests for :mod:`jacreg.config`: schema validation messages, settings and file-name forms."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from jacreg.config import (
    ConfigError,
    config_sha256,
    format_lambda,
    train_settings,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]
DELETE = object()


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's --configfile merge: nested dicts merged recursively, other values replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load(name: str) -> dict[str, Any]:
    with open(ROOT / name) as handle:
        return yaml.safe_load(handle)


@pytest.fixture()
def quick() -> dict[str, Any]:
    return _deep_merge(_load("config.yaml"), _load("configs/quick.yaml"))


def _set(config: dict[str, Any], path: tuple, value: Any) -> None:
    node = config
    for part in path[:-1]:
        node = node[part]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


@pytest.mark.parametrize("profile", ["configs/quick.yaml", "configs/fashion.yaml",
                                     "configs/paper-fashion.yaml", None])
def test_every_shipped_profile_has_three_seeds_and_three_attack_replicates(profile):
    """Issue #17: an interval over seeds and attack replicates needs at least three of each."""
    config = _load("config.yaml")
    if profile is not None:
        config = _deep_merge(config, _load(profile))
    validate_config(config)
    assert len(config["seeds"]) >= 3
    assert config["attack"]["replicates"] >= 3
    assert config["analysis"]["bootstrap"].get("interval", "student_t") == "student_t"


def test_paper_and_quick_configs_validate(quick):
    validate_config(_load("config.yaml"))
    validate_config(quick)
    assert quick["run_name"] == "quick"
    assert quick["lambdas"] == [0.0, 0.01, 0.1, 0.5, 1.0]  # lists replaced, not concatenated
    assert quick["train"]["architecture"] == "cnn_small"
    assert quick["train"]["optimizer"] == "adam"  # nested dicts merged: kept from config.yaml


# (path, new value, substrings the message must contain: key path + allowed type/range)
CASES = [
    (("lambdas", 1), -0.1, ["'lambdas[1]'", "minimum of 0"]),
    (("lambdas", 1), "a", ["'lambdas[1]'", "wrong type", "number"]),
    (("lambdas",), [], ["'lambdas'", "non-empty"]),
    (("seeds",), [], ["'seeds'", "non-empty"]),
    (("seeds", 0), -1, ["'seeds[0]'", "minimum of 0"]),
    (("seeds",), "0", ["'seeds'", "wrong type", "array"]),
    (("seeds",), [0, 0], ["'seeds'", "non-unique"]),
    (("datasets",), ["mnist5kk"], ["'datasets[0]'", "'mnist5kk'",
                                   "mnist5k, mnist, fashion_mnist, cifar10"]),
    (("epsilons", "mnist5k", 0), 0, ["'epsilons.mnist5k[0]'", "minimum of 0"]),
    (("epsilons", "mnist5k", 0), 1.5, ["'epsilons.mnist5k[0]'", "maximum of 1"]),
    (("epsilons", "mnist5k"), DELETE, ["'epsilons.mnist5k'", "missing", "(0, 1]"]),
    (("train", "epochs"), 0, ["'train.epochs'", "minimum of 1"]),
    (("train", "epochs"), 2.5, ["'train.epochs'", "wrong type", "integer"]),
    (("train", "batch_size"), -1, ["'train.batch_size'", "minimum of 1"]),
    (("train", "architecture"), "vgg", ["'train.architecture'", "cnn_small, cnn, resnet18"]),
    (("train", "lr"), 0, ["'train.lr'", "minimum of 0"]),
    (("train", "device"), "gpu", ["'train.device'", "auto|cpu|cuda"]),
    (("lambda",), [0.1], ["'<top level>'", "['lambda']", "lambdas"]),
    (("train", "epoch"), 3, ["'train'", "['epoch']", "epochs"]),
    (("train", "overrides", "cifar10", "lrr"), 0.1,
     ["'train.overrides.cifar10'", "['lrr']", "lr"]),
    (("train", "n_proj"), 1.5, ["'train.n_proj'", "wrong type", "integer"]),
    (("train", "n_proj"), 0, ["'train.n_proj'", "-1", "positive integer"]),
    (("train", "overrides", "cifar10", "n_proj"), 0,
     ["'train.overrides.cifar10.n_proj'", "-1", "positive integer"]),
    (("attack", "beta"), 0, ["'attack.beta'", "minimum of 0"]),
    (("attack", "replicates"), 0, ["'attack.replicates'", "minimum of 1"]),
    (("attack", "replicates"), 2.5, ["'attack.replicates'", "wrong type", "integer"]),
    (("analysis", "bootstrap", "interval"), "bca",
     ["'analysis.bootstrap.interval'", "student_t, percentile"]),
    (("attack", "step_fraction"), 1.5, ["'attack.step_fraction'", "maximum of 1"]),
    (("attack", "target_class"), 10, ["'attack.target_class'", "0-9"]),
    (("analysis", "claims", "min_correlation"), 2, ["'analysis.claims.min_correlation'",
                                                     "maximum of 1"]),
    (("run_name",), "a/b", ["'run_name'", "'a/b'", "A-Za-z0-9"]),
    (("data", "sources", "mnist5k"), "/data", ["'data.sources'", "['mnist5k']"]),
    (("data", "sources", "mnist"), 3, ["'data.sources.mnist'", "wrong type"]),
    (("data", "digests", "cifar10"), {"test_batch": "d41d8cd98f00b204e9800998ecf8427e"},
     ["'data.digests.cifar10.test_batch'", "[0-9a-f]{64}"]),
    (("data", "digests", "svhn"), {}, ["'data.digests'", "['svhn']"]),
]


@pytest.mark.parametrize("path,value,expected", CASES,
                         ids=[".".join(map(str, c[0])) + f"={c[1]!r}"[:20] for c in CASES])
def test_invalid_value_names_key_path_and_allowed_range(quick, path, value, expected):
    _set(quick, path, value)
    with pytest.raises(ConfigError) as info:
        validate_config(quick)
    message = str(info.value)
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


@pytest.mark.parametrize("key,value,replacement", [
    ("mirror", "https://mirror.example.org/mnist/", "data.sources"),
    ("mirror", None, "data.sources"),
    ("checksums", {"mnist": {"train-images-idx3-ubyte.gz": "0" * 32}}, "data.digests"),
])
def test_replaced_data_keys_say_what_replaced_them(quick, key, value, replacement):
    """Configs written for data.mirror / data.checksums get a migration message, not a bare
    'unknown key'."""
    quick["data"] = {key: value}
    with pytest.raises(ConfigError) as info:
        validate_config(quick)
    message = str(info.value)
    assert f"'data.{key}'" in message and f"replaced by '{replacement}'" in message, message
    assert "docs/datasets.md" in message


def test_both_replaced_data_keys_are_reported_together(quick):
    quick["data"] = {"mirror": None, "checksums": {}, "sources": {}}
    with pytest.raises(ConfigError) as info:
        validate_config(quick)
    assert "'data.sources'" in str(info.value) and "'data.digests'" in str(info.value)


def test_data_sources_and_digests_validate(quick):
    quick["data"] = {
        "sources": {"mnist": None, "fashion_mnist": "/usr/share/datasets/fashion-mnist",
                    "cifar10": "https://mirror.example.org/cifar/"},
        "digests": {"mnist": {"train-images-idx3-ubyte": "ab" * 32}},
    }
    validate_config(quick)
    validate_config(_deep_merge(_load("config.yaml"), _load("configs/fashion.yaml")))


def test_missing_epsilons_for_a_listed_dataset(quick):
    quick["datasets"] = ["mnist5k", "fashion_mnist"]
    del quick["epsilons"]["fashion_mnist"]
    with pytest.raises(ConfigError, match=r"'epsilons\.fashion_mnist': missing"):
        validate_config(quick)


def test_every_violation_is_listed(quick):
    quick["lambdas"] = [-1.0]
    quick["train"]["epochs"] = 0
    with pytest.raises(ConfigError) as info:
        validate_config(quick)
    assert "'lambdas[0]'" in str(info.value) and "'train.epochs'" in str(info.value)


def test_train_settings_apply_per_dataset_overrides():
    config = _load("config.yaml")
    cifar = train_settings(config, "cifar10")
    assert cifar["architecture"] == "resnet18"
    assert cifar["epochs"] == 30 and cifar["optimizer"] == "adam"  # overrides and the base
    assert cifar["schedule"] == "cosine" and cifar["augment"] is True
    assert cifar["n_proj"] == 1 and cifar["batch_size"] == 128  # inherited from train
    assert "overrides" not in cifar
    mnist = train_settings(config, "mnist")
    assert mnist["architecture"] == "cnn" and mnist["optimizer"] == "adam"
    assert mnist["lr"] == 0.001 and mnist["epochs"] == 20
    assert config["train"]["architecture"] == "cnn"  # the config itself is not modified


def test_train_settings_defaults_for_optional_keys():
    config = {"train": {"architecture": "cnn_small", "epochs": 1, "batch_size": 8,
                        "optimizer": "adam", "lr": 0.1, "n_proj": 1, "device": "cpu"}}
    settings = train_settings(config, "mnist5k")
    assert settings["weight_decay"] == 0.0
    assert settings["augment"] is False
    assert settings["schedule"] == "constant"


@pytest.mark.parametrize("value,text", [(0.0, "0"), (0, "0"), (0.01, "0.01"), (1.0, "1"),
                                        (1e-05, "1e-05"), (0.5, "0.5"), (10.0, "10")])
def test_format_lambda(value, text):
    assert format_lambda(value) == text


def test_config_sha256_is_order_independent_and_value_sensitive(quick):
    reordered = dict(reversed(list(quick.items())))
    assert config_sha256(reordered) == config_sha256(quick)
    changed = copy.deepcopy(quick)
    changed["lambdas"] = [0.0, 0.01]
    assert config_sha256(changed) != config_sha256(quick)
    assert len(config_sha256(quick)) == 64
