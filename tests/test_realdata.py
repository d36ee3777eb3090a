"""The real Fashion-MNIST, from Debian's ``dataset-fashion-mnist`` as a local ``data.sources``.

Debian recompressed Zalando's ``.gz`` files, so their md5s are not torchvision's; the decompressed
IDX files are the original release, which is what the recorded content digests
(:data:`jacreg.sources.CONTENT_DIGESTS`) identify. These tests prepare it through the production
path (local source -> content check -> torchvision's ``FashionMNIST`` class) and check it against
facts of the release computed here independently (gzip + hashlib + an IDX parser), not with the
code under test. Skipped where the package is not installed.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from jacreg.data import ChecksumError, DownloadError, load_prepared, prepare_dataset
from jacreg.sources import CONTENT_DIGESTS, STAGING_PREFIX

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
INSTALLED = all((DEBIAN_DIR / f"{name}.gz").is_file() for name in FILES)

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not INSTALLED, reason="Debian package dataset-fashion-mnist not installed "
                                             "(apt-get install dataset-fashion-mnist)"),
]


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: a source that cannot be reached."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


def decompressed(name: str, folder: Path = DEBIAN_DIR) -> bytes:
    return gzip.decompress((folder / f"{name}.gz").read_bytes())


def parse_idx(data: bytes) -> np.ndarray:
    """An IDX file of uint8 values: magic (0, 0, 0x08, ndim), the dims (big-endian int32)."""
    assert data[:3] == b"\x00\x00\x08"
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    root = tmp_path_factory.mktemp("fashion")
    tensors = prepare_dataset("fashion_mnist", root / "fashion_mnist.pt", raw_dir=root / "raw",
                              source=str(DEBIAN_DIR))
    return root, tensors


def test_split_sizes_and_per_class_counts(prepared):
    root, tensors = prepared
    assert {s: len(tensors[f"x_{s}"]) for s in ("train", "attack", "test")} == {
        "train": 50_000, "attack": 10_000, "test": 10_000}
    assert tuple(tensors["x_test"].shape[1:]) == (1, 28, 28)
    assert tensors["x_train"].dtype == torch.uint8
    train_and_attack = torch.cat([tensors["y_train"], tensors["y_attack"]])
    assert torch.bincount(train_and_attack, minlength=10).tolist() == [6_000] * 10
    assert torch.bincount(tensors["y_test"], minlength=10).tolist() == [1_000] * 10
    assert torch.equal(load_prepared(root / "fashion_mnist.pt")["y_test"], tensors["y_test"])


def test_recorded_content_digests_are_the_sha256_of_the_decompressed_files():
    recorded = CONTENT_DIGESTS["fashion_mnist"]
    assert set(recorded) == set(FILES)
    for name in FILES:
        assert recorded[name] == "sha256:" + hashlib.sha256(decompressed(name)).hexdigest(), name


def test_first_labels_are_the_release_order(prepared):
    _, tensors = prepared
    assert tensors["y_test"][:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert tensors["y_train"][:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]


def test_prepared_arrays_equal_the_idx_files(prepared):
    """Every image and label, against an independent parse of the IDX files."""
    _, tensors = prepared
    x = parse_idx(decompressed("train-images-idx3-ubyte"))
    y = parse_idx(decompressed("train-labels-idx1-ubyte")).astype(np.int64)
    assert x.shape == (60_000, 28, 28) and y.shape == (60_000,)
    assert torch.equal(tensors["x_train"][:, 0], torch.from_numpy(x[:50_000]))
    assert torch.equal(tensors["x_attack"][:, 0], torch.from_numpy(x[50_000:]))
    assert torch.equal(tensors["y_train"], torch.from_numpy(y[:50_000]))
    assert torch.equal(tensors["y_attack"], torch.from_numpy(y[50_000:]))
    x_test = parse_idx(decompressed("t10k-images-idx3-ubyte"))
    assert torch.equal(tensors["x_test"][:, 0], torch.from_numpy(x_test))


def test_a_second_preparation_verifies_in_place_without_the_source(prepared):
    root, tensors = prepared
    again = prepare_dataset("fashion_mnist", root / "again.pt", raw_dir=root / "raw",
                            source=closed_port_url())
    assert torch.equal(again["y_train"], tensors["y_train"])


def _copy_with(tmp_path: Path, name: str, data: bytes) -> Path:
    """A copy of the Debian directory with ``{name}.gz`` replaced by ``data``; the other files
    are links to the originals (read only, never copied into place by hand)."""
    folder = tmp_path / "fashion-copy"
    folder.mkdir()
    for other in FILES:
        if other != name:
            (folder / f"{other}.gz").symlink_to(DEBIAN_DIR / f"{other}.gz")
    (folder / f"{name}.gz").write_bytes(data)
    return folder


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated"])
def test_a_damaged_copy_is_refused_naming_the_file(damage, tmp_path):
    name = "t10k-labels-idx1-ubyte"
    original = decompressed(name)
    if damage == "flipped-byte":
        payload = bytearray(original)
        payload[1000] ^= 0x01  # one label changed; recompressed: a well-formed file
        data = gzip.compress(bytes(payload))
    else:
        data = (DEBIAN_DIR / f"{name}.gz").read_bytes()[:2000]
    folder = _copy_with(tmp_path, name, data)
    raw = tmp_path / "raw"
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("fashion_mnist", tmp_path / "f.pt", raw_dir=raw, source=str(folder))
    message = str(caught.value)
    assert str(folder / f"{name}.gz") in message, message
    others = [other for other in FILES if other != name]
    assert not any(f"{other}.gz" in message for other in others), message  # only the bad one
    if damage == "flipped-byte":
        assert CONTENT_DIGESTS["fashion_mnist"][name].split(":")[1] in message
        assert hashlib.sha256(bytes(payload)).hexdigest() in message
    assert not (tmp_path / "f.pt").exists()
    assert not [p for p in raw.rglob("*") if p.is_file()]  # nothing in place, no staging
    assert not list(raw.rglob(f"{STAGING_PREFIX}*"))
    with pytest.raises(DownloadError):  # and nothing a later run would accept
        prepare_dataset("fashion_mnist", tmp_path / "g.pt", raw_dir=raw,
                        source=closed_port_url())
    shutil.rmtree(folder)
