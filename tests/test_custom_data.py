"""Your own datasets (data.custom): prepared pixel for pixel, and every kind of bad data refused
with the file and the problem named (src/jacreg/custom_data.py, src/jacreg/preflight.py)."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from jacreg.config import ConfigError, validate_config
from jacreg.custom_data import (
    BUILTIN_DATASETS,
    IMAGE_EXTENSIONS,
    DataError,
    check_source,
    holdout_rows,
    prepare_custom,
)
from jacreg.data import REGISTRY, load_dataset, load_prepared_spec, to_float
from jacreg.preflight import PreflightError, preflight

ROOT = Path(__file__).resolve().parents[1]


def _merged(base: dict, update: dict) -> dict:
    """Snakemake's --configfile merge: nested mappings merged, other values replaced."""
    out = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


@pytest.fixture()
def example_config() -> dict:
    """config.yaml with examples/custom/config.yaml on top, as the example's command reads."""
    return _merged(yaml.safe_load((ROOT / "config.yaml").read_text()),
                   yaml.safe_load((ROOT / "examples/custom/config.yaml").read_text()))


def _digits(n_train: int = 60, n_test: int = 30, classes: int = 3, seed: int = 0,
            shape: tuple[int, ...] = (8, 8)) -> dict[str, np.ndarray]:
    """Random uint8 images with every class in every split."""
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
            "y_train": np.arange(n_train) % classes,
            "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
            "y_test": np.arange(n_test) % classes}


def _npz(tmp_path: Path, arrays: dict[str, np.ndarray], name: str = "data.npz") -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_builtin_names_and_extensions_match_the_package_and_torchvision():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert BUILTIN_DATASETS == tuple(REGISTRY)
    assert IMAGE_EXTENSIONS == tuple(IMG_EXTENSIONS)


# ----------------------------------------------------------------------- pixel for pixel


def test_npz_channels_last_with_attack_split_prepared_pixel_for_pixel(tmp_path):
    arrays = _digits(shape=(6, 5, 3))  # N x H x W x C, non-square
    rng = np.random.default_rng(1)
    arrays["x_attack"] = rng.integers(0, 256, (12, 6, 5, 3), dtype=np.uint8)
    arrays["y_attack"] = np.arange(12) % 3
    arrays["class_names"] = np.array(["cat", "dog", "eel"])
    path = _npz(tmp_path, arrays)
    out = tmp_path / "prepared.pt"
    prepare_custom("pets", {"format": "npz", "path": str(path)}, out)
    tensors, spec = load_prepared_spec(out, "pets")
    for split in ("train", "attack", "test"):
        source = arrays[f"x_{split}"].transpose(0, 3, 1, 2)
        assert tensors[f"x_{split}"].dtype == torch.uint8
        assert np.array_equal(tensors[f"x_{split}"].numpy(), source), split
        assert np.array_equal(tensors[f"y_{split}"].numpy(), arrays[f"y_{split}"]), split
    assert (spec.channels, spec.height, spec.width, spec.num_classes) == (3, 6, 5, 3)
    assert spec.image_size == (6, 5) and spec.classes == ("cat", "dog", "eel")
    x, y = load_dataset("pets", "test", path=out)  # the public API reads it too
    assert torch.equal(x, to_float(tensors["x_test"])) and torch.equal(y, tensors["y_test"])


def test_npz_float_images_and_held_out_attack_split_are_exact(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {"x_train": rng.random((50, 1, 7, 7), dtype=np.float32),  # N x C x H x W float
              "y_train": np.arange(50) % 2,
              "x_test": rng.random((20, 1, 7, 7), dtype=np.float32),
              "y_test": np.arange(20) % 2}
    out = tmp_path / "prepared.pt"
    tensors = prepare_custom("floats", {"format": "npz", "path": str(_npz(tmp_path, arrays))}, out)
    rows = holdout_rows(50, 10)  # default: a fifth held out at random, fixed seed
    keep = np.setdiff1d(np.arange(50), rows)
    assert tensors["x_train"].dtype == torch.float32
    assert np.array_equal(tensors["x_attack"].numpy(), arrays["x_train"][rows])
    assert np.array_equal(tensors["x_train"].numpy(), arrays["x_train"][keep])
    assert np.array_equal(tensors["y_attack"].numpy(), arrays["y_train"][rows])
    assert np.array_equal(tensors["x_test"].numpy(), arrays["x_test"])
    assert torch.equal(to_float(tensors["x_test"]), torch.from_numpy(arrays["x_test"]))
    assert load_prepared_spec(out, "floats")[1].classes == ("0", "1")


def test_attack_holdout_zero_crafts_on_the_training_images(tmp_path):
    arrays = _digits()
    tensors = prepare_custom("d", {"format": "npz", "path": str(_npz(tmp_path, arrays)),
                                   "attack_holdout": 0}, tmp_path / "p.pt")
    assert np.array_equal(tensors["x_train"].numpy()[:, 0], arrays["x_train"])
    assert torch.equal(tensors["x_attack"], tensors["x_train"])


def _write_folder(root: Path, arrays: dict[str, np.ndarray], names: list[str], mode: str) -> None:
    for split in ("train", "test"):
        for i, (image, label) in enumerate(zip(arrays[f"x_{split}"], arrays[f"y_{split}"],
                                               strict=True)):
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode=mode).save(folder / f"{i:04d}.png")


@pytest.mark.parametrize("mode,shape", [("L", (9, 8)), ("RGB", (9, 8, 3))])
def test_image_folder_prepared_pixel_for_pixel(tmp_path, mode, shape):
    arrays = _digits(n_train=30, n_test=9, shape=shape)
    names = ["apple", "kiwi", "pear"]
    _write_folder(tmp_path / "imgs", arrays, names, mode)
    out = tmp_path / "prepared.pt"
    tensors = prepare_custom("fruit", {"format": "folder", "path": str(tmp_path / "imgs"),
                                       "attack_holdout": 0}, out)
    spec = load_prepared_spec(out, "fruit")[1]
    assert spec.classes == tuple(names) and spec.channels == (1 if mode == "L" else 3)
    for split in ("train", "test"):
        # ImageFolder's order: by class folder, then file name
        order = np.lexsort((np.arange(len(arrays[f"y_{split}"])), arrays[f"y_{split}"]))
        expected = arrays[f"x_{split}"][order]
        expected = expected[:, None] if mode == "L" else expected.transpose(0, 3, 1, 2)
        assert np.array_equal(tensors[f"x_{split}"].numpy(), expected), split
        assert np.array_equal(tensors[f"y_{split}"].numpy(), arrays[f"y_{split}"][order])


def test_image_folder_resize_makes_one_size(tmp_path):
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for k, name in enumerate(["a", "b"]):
            (root / split / name).mkdir(parents=True)
            Image.new("L", (10 + k, 12), color=40 * k).save(root / split / name / "x.png")
    entry = {"format": "folder", "path": str(root), "attack_holdout": 0}
    with pytest.raises(DataError, match="different sizes without 'resize'"):
        check_source("shapes", entry)
    tensors = prepare_custom("shapes", {**entry, "resize": [6, 5]}, tmp_path / "p.pt")
    assert tuple(tensors["x_train"].shape) == (2, 1, 6, 5)


def _idx(images: np.ndarray | None = None, labels: np.ndarray | None = None) -> bytes:
    if images is not None:
        n, h, w = images.shape
        return struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()
    assert labels is not None
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def test_torchvision_class_by_name_through_data_sources(tmp_path):
    """KMNIST from a local directory (the built-ins' data.sources mechanism, verified against
    data.digests), then a class with neither download nor train flag (FakeData)."""
    arrays = _digits(n_train=40, n_test=20, classes=10, shape=(28, 28))
    arrays["y_train"], arrays["y_test"] = np.arange(40) % 10, np.arange(20) % 10
    payloads = {"train-images-idx3-ubyte": _idx(arrays["x_train"]),
                "train-labels-idx1-ubyte": _idx(labels=arrays["y_train"]),
                "t10k-images-idx3-ubyte": _idx(arrays["x_test"]),
                "t10k-labels-idx1-ubyte": _idx(labels=arrays["y_test"])}
    source = tmp_path / "kmnist-files"
    source.mkdir()
    for name, data in payloads.items():
        (source / f"{name}.gz").write_bytes(gzip.compress(data))
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in payloads.items()}
    tensors = prepare_custom("kuzushiji", {"format": "torchvision", "class": "KMNIST",
                                           "attack_holdout": 0}, tmp_path / "k.pt",
                             raw_dir=tmp_path / "raw", source=str(source), digests=digests)
    assert np.array_equal(tensors["x_test"].numpy()[:, 0], arrays["x_test"])
    assert np.array_equal(tensors["y_train"].numpy(), arrays["y_train"])
    assert load_prepared_spec(tmp_path / "k.pt", "kuzushiji")[1].classes[0] == "o"  # KMNIST's

    fake = {"format": "torchvision", "class": "FakeData", "attack_holdout": 0,
            "kwargs": {"size": 24, "image_size": [1, 6, 6], "num_classes": 2},
            "train_kwargs": {"random_offset": 0}, "test_kwargs": {"random_offset": 1000}}
    tensors = prepare_custom("fake", fake, tmp_path / "f.pt", raw_dir=tmp_path / "raw")
    assert tuple(tensors["x_train"].shape) == (24, 1, 6, 6)
    with pytest.raises(DataError, match="torchvision.datasets has no dataset class 'Nope'"):
        prepare_custom("nope", {"format": "torchvision", "class": "Nope"}, tmp_path / "n.pt")


# ----------------------------------------------------------------------- bad data


def _bad(case: str) -> dict[str, np.ndarray]:
    arrays = _digits()
    if case == "label outside 0..K-1":
        arrays["y_test"] = arrays["y_test"].copy()
        arrays["y_test"][4] = 7
        arrays["class_names"] = np.array(["a", "b", "c"])
    elif case == "negative label":
        arrays["y_train"] = arrays["y_train"] - 1
    elif case == "class missing from a split":
        arrays["y_test"] = np.where(arrays["y_test"] == 2, 1, arrays["y_test"])
    elif case == "mismatched lengths":
        arrays["y_train"] = arrays["y_train"][:-1]
    elif case == "float values above 1":
        arrays["x_test"] = arrays["x_test"].astype(np.float32)  # 0-255 as float
    elif case == "integer values above 255":
        arrays["x_train"] = arrays["x_train"].astype(np.int32) * 2
    elif case == "NaN":
        arrays["x_train"] = arrays["x_train"] / 255.0
        arrays["x_train"][3, 2, 2] = np.nan
    elif case == "empty split":
        arrays["x_test"], arrays["y_test"] = arrays["x_test"][:0], arrays["y_test"][:0]
    elif case == "wrong shape":
        arrays["x_train"] = arrays["x_train"].reshape(60, 64)
    elif case == "one-hot labels":
        arrays["y_train"] = np.eye(3, dtype=np.int64)[arrays["y_train"]]
    elif case == "float labels":
        arrays["y_test"] = arrays["y_test"].astype(np.float32)
    elif case == "missing array":
        del arrays["y_test"]
    elif case == "object array":
        arrays["class_names"] = np.array(["a", 1, None], dtype=object)
    return arrays


BAD_NPZ = {
    "label outside 0..K-1": ["y_test", "1 labels outside 0..2", "7 at index 4", "class_names"],
    "negative label": ["y_train", "labels outside", "-1 at index 0"],
    "class missing from a split": ["y_test", "class(es) 2 missing from the test split"],
    "mismatched lengths": ["x_train has 60 images but", "y_train has 59 labels"],
    "float values above 1": ["x_test", "values outside [0, 1]", "max 255"],
    "integer values above 255": ["x_train", "values outside 0..255", "max 510"],
    "NaN": ["x_train", "1 NaN"],
    "empty split": ["x_test", "empty split"],
    "wrong shape": ["x_train", "shape (60, 64)", "N x H x W"],
    "one-hot labels": ["y_train", "1-D array of class indices", "one-hot"],
    "float labels": ["y_test", "labels must be integers"],
    "missing array": ["missing array 'y_test'"],
    "object array": ["class_names", "refused", "allow_pickle"],
}


@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_bad_npz_is_refused_naming_the_file_and_the_problem(tmp_path, case):
    path = _npz(tmp_path, _bad(case))
    entry = {"format": "npz", "path": str(path)}
    with pytest.raises(DataError) as info:
        check_source("mine", entry)
    message = str(info.value)
    assert "data.custom.mine" in message and str(path) in message, message
    for text in BAD_NPZ[case]:
        assert text in message, f"{text!r} not in {message!r}"
    out = tmp_path / "prepared.pt"
    with pytest.raises(DataError):  # the preparation job refuses it too, writing nothing
        prepare_custom("mine", entry, out)
    assert not out.exists()
    good = _npz(tmp_path, _digits(), "good.npz")  # control: the same checks pass good data
    check_source("mine", {"format": "npz", "path": str(good)})


def test_unreadable_and_missing_files_are_named(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    for path, problem in ((text, "not a readable .npz archive"),
                          (tmp_path / "absent.npz", "no such file")):
        with pytest.raises(DataError, match=problem) as info:
            check_source("mine", {"format": "npz", "path": str(path)})
        assert str(path) in str(info.value)


def test_bad_image_folders_are_refused_naming_the_file(tmp_path):
    arrays = _digits(n_train=6, n_test=3)
    root = tmp_path / "imgs"
    _write_folder(root, arrays, ["a", "b", "c"], "L")
    for image in (root / "test" / "c").iterdir():
        image.unlink()
    (root / "train" / "b" / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError) as info:
        check_source("mine", {"format": "folder", "path": str(root)})
    message = str(info.value)
    assert f"{root / 'test' / 'c'}: no image files" in message
    assert "missing from the test split" in message
    assert f"{root / 'train' / 'b' / 'broken.png'}: not a readable image" in message


def test_preflight_refuses_bad_data_before_any_job_and_skips_prepared_data(tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    _npz(tmp_path, _bad("class missing from a split"), "mine.npz")
    config = {"datasets": ["mine"], "data": {"custom": {"mine": {"format": "npz",
                                                                 "path": "mine.npz"}}}}
    with pytest.raises(PreflightError, match="missing from the test split"):
        preflight(config)
    prepared = tmp_path / "data" / "prepared" / "mine.pt"
    prepared.parent.mkdir(parents=True)
    prepared.write_bytes(b"newer than the npz")  # prepared already: its source is not read
    preflight(config)


def test_target_class_is_checked_against_the_custom_datasets_classes(tmp_path, monkeypatch,
                                                                     example_config):
    """attack.target_class beyond a custom dataset's K classes stops the run before any job,
    naming the key, the dataset and the allowed range; K from the source, or from the prepared
    file once the data is prepared."""
    monkeypatch.chdir(tmp_path)
    _npz(tmp_path, _digits(classes=3), "mine.npz")
    config = dict(example_config, datasets=["mine"], epsilons={"mine": [0.1]},
                  data={"custom": {"mine": {"format": "npz", "path": "mine.npz"}}},
                  attack=dict(example_config["attack"], target_class=12), models={},
                  train={k: v for k, v in example_config["train"].items() if k != "arch_kwargs"})
    config["train"]["architecture"] = "cnn_small"
    validate_config(config)  # the built-ins' 0-9 does not apply: K comes from the data
    with pytest.raises(PreflightError) as info:
        preflight(config)
    assert str(info.value) == (
        "config key 'attack.target_class': 12 is out of range for dataset 'mine' (3 classes, "
        "read from mine.npz); allowed: null or a class index 0-2")
    config["attack"]["target_class"] = 3
    with pytest.raises(PreflightError, match="3 is out of range for dataset 'mine'"):
        preflight(config)
    config["attack"]["target_class"] = 2
    preflight(config)
    # prepared: K as the prepared file records it (its source is not read again)
    prepare_custom("mine", config["data"]["custom"]["mine"], tmp_path / "data/prepared/mine.pt")
    (tmp_path / "mine.npz").unlink()
    preflight(config)
    config["attack"]["target_class"] = 5
    with pytest.raises(PreflightError) as info:
        preflight(config)
    assert "(3 classes, recorded in data/prepared/mine.pt); allowed: null or a class index 0-2" \
        in str(info.value)
    # a torchvision class without class_names tells K only once downloaded: the attack job
    # checks it, with the same message, before loading the model
    from jacreg.cli import main

    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["attack", "--dataset", "mine", "--lam", "0", "--seed", "0", "--checkpoint",
                  "never-read.pt", "--data", "data/prepared/mine.pt", "--eps", "[0.1]",
                  "--settings", '{"target_class": 5}', "--out", "uap.pt"])
    finally:
        torch.set_num_threads(threads)
    assert str(exit_info.value.code).startswith(
        "config key 'attack.target_class': 5 is out of range for dataset 'mine' (3 classes")
    # beside a built-in dataset, the built-ins' range is checked with the configuration
    config["datasets"] = ["mine", "mnist5k"]
    config["epsilons"]["mnist5k"] = [0.1]
    config["attack"]["target_class"] = 10
    with pytest.raises(ConfigError, match="'attack.target_class': 10 is out of range"):
        validate_config(config)


def test_config_names_custom_datasets_and_their_keys(example_config):
    config = example_config
    validate_config(config)  # the worked example's configuration is valid
    config["datasets"] = ["mine"]
    config["epsilons"] = {"mine": [0.1]}
    with pytest.raises(ConfigError, match="'datasets\\[0\\]': 'mine' is neither a built-in"):
        validate_config(config)
    config["data"] = {"custom": {"mine": {"format": "npz", "path": "x.npz", "resize": 4}}}
    with pytest.raises(ConfigError, match="\\['resize'\\] do not apply to format npz"):
        validate_config(config)
    config["data"] = {"custom": {"mnist": {"format": "folder", "path": "x"},
                                 "mine": {"format": "npz"}}}
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert "'mnist' is a built-in dataset" in str(info.value)
    assert "format npz needs 'path'" in str(info.value)
    config["data"] = {"custom": {"mine": {"format": "npz", "path": "x.npz"}}}
    validate_config(config)
    config["train"]["arch_kwargs"] = {"num_classes": 3}
    with pytest.raises(ConfigError, match="\\['num_classes'\\] come from the data"):
        validate_config(config)
