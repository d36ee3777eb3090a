"""Offline tests of where the raw dataset files come from and how they are verified.

Small files in the real formats (gzipped IDX files for MNIST and Fashion-MNIST, the pickled
batches of ``cifar-10-python.tar.gz`` for CIFAR-10) are generated here and offered three ways:

- as a ``data.sources`` http(s) base URL, served by a local HTTP server on 127.0.0.1;
- as a ``data.sources`` local directory (a plain path or a ``file://`` URL);
- as torchvision's own mirror (``data.sources`` null): torchvision's class attributes (mirrors,
  URL, md5s) are pointed at the local server in-process, with the generated archives' md5s, as
  torchvision's real mirror and published md5s would be.

URL and local sources are verified by the *content* of the payload files (SHA-256 of the
decompressed IDX files / CIFAR batches, given as ``digests``), not by their packaging. Everything
else is torchvision's real code: its dataset classes, download, md5 checks and file readers.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from jacreg.data import ChecksumError, DownloadError, load_prepared, prepare_dataset
from jacreg.sources import STAGING_PREFIX, parse_source

REPO = Path(__file__).resolve().parents[1]
MNIST_PAYLOADS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_FILES = tuple(f"{name}.gz" for name in MNIST_PAYLOADS)
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_PAYLOADS = (*CIFAR_TRAIN, "test_batch", "batches.meta")
CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"]
# where torchvision keeps each dataset's files under raw_dir
RAW_FOLDER = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "."}
PAYLOAD_FOLDER = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw",
                  "cifar10": CIFAR_FOLDER}
ARCHIVE = {"mnist": MNIST_FILES[0], "fashion_mnist": MNIST_FILES[0], "cifar10": CIFAR_ARCHIVE}
MNIST_LIKE = ("mnist", "fashion_mnist")
ALL = ("mnist", "fashion_mnist", "cifar10")


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _gzip(data: bytes, mtime: int = 0, compresslevel: int = 9) -> bytes:
    return gzip.compress(data, compresslevel=compresslevel, mtime=mtime)  # deterministic bytes


def idx_images(images: np.ndarray) -> bytes:
    """IDX3: big-endian magic 2051 (uint8, 3 dims), the dims, then the pixels."""
    n, rows, cols = images.shape
    return np.array([2051, n, rows, cols], dtype=">i4").tobytes() + images.tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    """IDX1: big-endian magic 2049 (uint8, 1 dim), the count, then the labels."""
    return np.array([2049, len(labels)], dtype=">i4").tobytes() + labels.astype(np.uint8).tobytes()


def cifar_archive(members: dict[str, bytes], mtime: int = 0, compresslevel: int = 9) -> bytes:
    """``cifar-10-python.tar.gz`` holding ``cifar-10-batches-py/{name}`` for each member."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=mtime, compresslevel=compresslevel) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{CIFAR_FOLDER}/{name}")
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class FakeDataset:
    """Generated raw files and the arrays they hold, (N, C, H, W) uint8.

    ``files``: as published, under torchvision's file names (the ``.gz`` files; the CIFAR
    archive); ``payloads``: the decompressed payload files their content is verified by.
    """

    files: dict[str, bytes]
    payloads: dict[str, bytes]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def digests(self) -> dict[str, str]:
        """``data.digests.{dataset}``: SHA-256 of each decompressed payload file."""
        return {name: sha256_of(data) for name, data in self.payloads.items()}

    @property
    def checksums(self) -> dict[str, str]:
        """md5 of every published file and payload (what torchvision's classes check)."""
        return {name: md5_of(data) for name, data in {**self.files, **self.payloads}.items()}


def make_mnist(n_train: int = 60, n_test: int = 20, seed: int = 0) -> FakeDataset:
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    y_train = rng.integers(0, 10, n_train).astype(np.int64)
    y_test = rng.integers(0, 10, n_test).astype(np.int64)
    contents = [idx_images(x_train), idx_labels(y_train), idx_images(x_test), idx_labels(y_test)]
    payloads = dict(zip(MNIST_PAYLOADS, contents, strict=True))
    files = {f"{name}.gz": _gzip(data) for name, data in payloads.items()}
    return FakeDataset(files, payloads, x_train[:, None], y_train, x_test[:, None], y_test)


def make_cifar(n_train: int = 50, n_test: int = 20, seed: int = 0) -> FakeDataset:
    """``cifar-10-python.tar.gz``: 5 training batches, a test batch and ``batches.meta``, each
    a pickled dict as torchvision's CIFAR10 reads it (``data``: N x 3072 uint8 rows, channel
    planes R, G, B of 32 x 32; ``labels``: list of ints; ``label_names`` in the meta file)."""
    assert n_train % 5 == 0
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    y_train = rng.integers(0, 10, n_train).astype(np.int64)
    y_test = rng.integers(0, 10, n_test).astype(np.int64)

    def batch(x: np.ndarray, y: np.ndarray) -> bytes:
        return pickle.dumps({"data": x.reshape(len(x), 3072), "labels": [int(v) for v in y],
                             "batch_label": "generated"}, protocol=2)

    per = n_train // 5
    members = {name: batch(x_train[i * per:(i + 1) * per], y_train[i * per:(i + 1) * per])
               for i, name in enumerate(CIFAR_TRAIN)}
    members["test_batch"] = batch(x_test, y_test)
    members["batches.meta"] = pickle.dumps({"label_names": CIFAR_LABELS}, protocol=2)
    return FakeDataset({CIFAR_ARCHIVE: cifar_archive(members)}, members,
                       x_train, y_train, x_test, y_test)


MAKERS = {"mnist": make_mnist, "fashion_mnist": functools.partial(make_mnist, seed=1),
          "cifar10": make_cifar}


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        self.requests.append(self.path)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # torchvision's redirect probe closes its first connection unread: broken pipes


@dataclass
class Mirror:
    url: str
    root: Path
    requests: list[str]


@contextlib.contextmanager
def serve(root: Path) -> Iterator[Mirror]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port) from a thread."""
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = _QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield Mirror(f"http://127.0.0.1:{server.server_address[1]}/", root, requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def publish(fake: FakeDataset, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in fake.files.items():
        (root / name).write_bytes(data)


@pytest.fixture()
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    with serve(tmp_path / "mirror") as served:
        served.root.mkdir()
        yield served


def requested(served: Mirror) -> set[str]:
    """File names the mirror was asked for (torchvision requests each twice: redirect check)."""
    return {path.rsplit("/", 1)[-1] for path in served.requests}


def assert_prepared_equals(tensors: dict[str, torch.Tensor], fake: FakeDataset) -> None:
    n = len(fake.x_train)
    n_fit = n - n // 5  # attack_holdout: min(10_000, n_train // 5)
    expected = {
        "x_train": fake.x_train[:n_fit], "y_train": fake.y_train[:n_fit],
        "x_attack": fake.x_train[n_fit:], "y_attack": fake.y_train[n_fit:],
        "x_test": fake.x_test, "y_test": fake.y_test,
    }
    for key, want in expected.items():
        got = tensors[key]
        assert got.dtype == (torch.uint8 if key.startswith("x") else torch.int64), key
        assert tuple(got.shape) == want.shape, key
        assert torch.equal(got, torch.from_numpy(np.ascontiguousarray(want))), key


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``folder``: bytes, mtime and mode (to show a source was only read)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def payload_paths(raw: Path, name: str) -> list[Path]:
    names = CIFAR_PAYLOADS if name == "cifar10" else MNIST_PAYLOADS
    return [raw / PAYLOAD_FOLDER[name] / payload for payload in names]


def assert_nothing_acceptable(raw: Path, name: str, fake: FakeDataset) -> None:
    """After a failed first preparation: no payload file in torchvision's layout, no staging
    folder, and a later run with an unreachable source finds nothing to accept."""
    assert not [p for p in payload_paths(raw, name) if p.exists()]
    assert not list(raw.rglob(f"{STAGING_PREFIX}*"))
    with pytest.raises(DownloadError):
        prepare_dataset(name, raw.parent / "later.pt", raw_dir=raw, source=closed_port_url(),
                        digests=fake.digests)
    assert not (raw.parent / "later.pt").exists()


def local_copy(fake: FakeDataset, folder: Path, form: str) -> Path:
    """Put ``fake``'s files into ``folder`` as a local source: ``gz`` (as published), ``plain``
    (MNIST-like: the decompressed IDX files), ``extracted`` (CIFAR: cifar-10-batches-py/)."""
    folder.mkdir(parents=True, exist_ok=True)
    if form == "gz":
        publish(fake, folder)
    elif form == "plain":
        for payload, data in fake.payloads.items():
            (folder / payload).write_bytes(data)
    else:
        (folder / CIFAR_FOLDER).mkdir()
        for payload, data in fake.payloads.items():
            (folder / CIFAR_FOLDER / payload).write_bytes(data)
    return folder


# --- a URL source -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_url_source_prepares_the_exact_arrays_and_then_needs_no_network(name, mirror, tmp_path):
    fake = MAKERS[name]()
    publish(fake, mirror.root)
    raw, out = tmp_path / "raw", tmp_path / "prepared" / f"{name}.pt"
    tensors = prepare_dataset(name, out, raw_dir=raw, source=mirror.url, digests=fake.digests)
    assert_prepared_equals(tensors, fake)
    assert_prepared_equals(load_prepared(out), fake)
    channels, size = (3, 32) if name == "cifar10" else (1, 28)
    assert tensors["x_test"].shape[1:] == (channels, size, size)
    assert requested(mirror) == set(fake.files)
    # the verified payloads are in torchvision's layout, byte for byte; no staging folder left
    for path in payload_paths(raw, name):
        assert path.read_bytes() == fake.payloads[path.name], path
    assert not list(raw.rglob(f"{STAGING_PREFIX}*"))

    # a second preparation verifies the files in place and needs no network
    mirror.requests.clear()
    again = prepare_dataset(name, tmp_path / "again.pt", raw_dir=raw, source=closed_port_url(),
                            digests=fake.digests)
    assert_prepared_equals(again, fake)
    assert mirror.requests == []


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_a_file_damaged_in_place_is_fetched_again_not_trusted(name, mirror, tmp_path):
    """In place means verified in place: a damaged payload is not taken for a prepared one."""
    fake = MAKERS[name]()
    publish(fake, mirror.root)
    raw = tmp_path / "raw"
    prepare_dataset(name, tmp_path / "a.pt", raw_dir=raw, source=mirror.url, digests=fake.digests)
    damaged = payload_paths(raw, name)[1]
    damaged.write_bytes(damaged.read_bytes()[:-7])

    with pytest.raises(DownloadError):  # not verified in place, and the source is unreachable
        prepare_dataset(name, tmp_path / "b.pt", raw_dir=raw, source=closed_port_url(),
                        digests=fake.digests)
    assert not (tmp_path / "b.pt").exists()
    tensors = prepare_dataset(name, tmp_path / "c.pt", raw_dir=raw, source=mirror.url,
                              digests=fake.digests)
    assert_prepared_equals(tensors, fake)
    assert damaged.read_bytes() == fake.payloads[damaged.name]


# --- a local directory source -------------------------------------------------------------------

@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
@pytest.mark.parametrize("form", ["gz", "plain"])
@pytest.mark.parametrize("name", MNIST_LIKE)
def test_local_directory_source_mnist_like(name, form, as_url, tmp_path):
    fake = MAKERS[name]()
    folder = local_copy(fake, tmp_path / "shared copy", form)  # a space: quoted in the URL
    before = snapshot(folder)
    source = folder.as_uri() if as_url else str(folder)
    raw = tmp_path / "raw"
    tensors = prepare_dataset(name, tmp_path / f"{name}.pt", raw_dir=raw, source=source,
                              digests=fake.digests)
    assert_prepared_equals(tensors, fake)
    assert snapshot(folder) == before  # only read
    for path in payload_paths(raw, name):
        assert path.read_bytes() == fake.payloads[path.name]
    assert not list(raw.rglob(f"{STAGING_PREFIX}*"))


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
@pytest.mark.parametrize("form", ["gz", "extracted"], ids=["archive", "extracted"])
def test_local_directory_source_cifar(form, as_url, tmp_path):
    fake = make_cifar()
    folder = local_copy(fake, tmp_path / "cifar", form)
    before = snapshot(folder)
    source = folder.as_uri() if as_url else str(folder)
    tensors = prepare_dataset("cifar10", tmp_path / "c.pt", raw_dir=tmp_path / "raw",
                              source=source, digests=fake.digests)
    assert_prepared_equals(tensors, fake)
    assert snapshot(folder) == before


def test_relative_local_directory_is_resolved_against_the_working_directory(tmp_path,
                                                                             monkeypatch):
    fake = make_mnist()
    local_copy(fake, tmp_path / "datasets" / "mnist", "gz")
    monkeypatch.chdir(tmp_path)
    tensors = prepare_dataset("mnist", "m.pt", raw_dir="raw", source="datasets/mnist",
                              digests=fake.digests)
    assert_prepared_equals(tensors, fake)


# --- content, not packaging ---------------------------------------------------------------------

@pytest.mark.parametrize("name", MNIST_LIKE)
def test_recompressed_mnist_like_files_are_accepted_by_content(name, mirror, tmp_path):
    fake = MAKERS[name]()
    for payload, data in fake.payloads.items():
        recompressed = _gzip(data, mtime=1_234_567, compresslevel=1)
        assert md5_of(recompressed) != md5_of(fake.files[f"{payload}.gz"])  # other packaging
        (mirror.root / f"{payload}.gz").write_bytes(recompressed)
    tensors = prepare_dataset(name, tmp_path / "m.pt", raw_dir=tmp_path / "raw",
                              source=mirror.url, digests=fake.digests)
    assert_prepared_equals(tensors, fake)


def test_recompressed_cifar_archive_is_accepted_by_content(mirror, tmp_path):
    fake = make_cifar()
    recompressed = cifar_archive(fake.payloads, mtime=1_234_567, compresslevel=1)
    assert md5_of(recompressed) != md5_of(fake.files[CIFAR_ARCHIVE])
    (mirror.root / CIFAR_ARCHIVE).write_bytes(recompressed)
    tensors = prepare_dataset("cifar10", tmp_path / "c.pt", raw_dir=tmp_path / "raw",
                              source=mirror.url, digests=fake.digests)
    assert_prepared_equals(tensors, fake)


def _torchvision_md5s(monkeypatch, name: str, fake: FakeDataset, url: str) -> None:
    """Make torchvision's class publish ``fake``'s files and md5s at ``url``, as its real
    mirrors and md5s are for the real files."""
    import torchvision.datasets as tvd

    if name == "cifar10":
        cls = tvd.CIFAR10
        md5 = fake.checksums
        monkeypatch.setattr(cls, "url", url + CIFAR_ARCHIVE)
        monkeypatch.setattr(cls, "tgz_md5", md5[CIFAR_ARCHIVE])
        monkeypatch.setattr(cls, "train_list", [[b, md5[b]] for b in CIFAR_TRAIN])
        monkeypatch.setattr(cls, "test_list", [["test_batch", md5["test_batch"]]])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})
    else:
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        monkeypatch.setattr(cls, "mirrors", [url])
        monkeypatch.setattr(cls, "resources",
                            [(file, md5_of(fake.files[file])) for file in MNIST_FILES])


def test_mnist_without_a_content_digest_falls_back_to_the_archive_md5(mirror, tmp_path,
                                                                     monkeypatch):
    """No content digest is recorded for mnist: a source must then hold torchvision's original
    archives (checked by their md5), or data.digests.mnist gives the content digests."""
    fake = make_mnist()
    _torchvision_md5s(monkeypatch, "mnist", fake, closed_port_url())
    publish(fake, mirror.root)
    raw1 = tmp_path / "raw1"
    tensors = prepare_dataset("mnist", tmp_path / "a.pt", raw_dir=raw1, source=mirror.url)
    assert_prepared_equals(tensors, fake)
    # verified in place by the archives kept beside the IDX files: no network needed, and a
    # damaged IDX file is rebuilt from its verified archive rather than trusted
    for archive in MNIST_FILES:
        assert (raw1 / "MNIST/raw" / archive).read_bytes() == fake.files[archive]
    idx = raw1 / "MNIST/raw" / MNIST_PAYLOADS[0]
    idx.write_bytes(idx.read_bytes()[:500])
    again = prepare_dataset("mnist", tmp_path / "a2.pt", raw_dir=raw1, source=closed_port_url())
    assert_prepared_equals(again, fake)
    # a damaged archive in place is not trusted either: fetched again
    archive = raw1 / "MNIST/raw" / MNIST_FILES[1]
    archive.write_bytes(archive.read_bytes()[:-5])
    with pytest.raises(DownloadError):
        prepare_dataset("mnist", tmp_path / "a3.pt", raw_dir=raw1, source=closed_port_url())
    prepare_dataset("mnist", tmp_path / "a3.pt", raw_dir=raw1, source=mirror.url)
    assert archive.read_bytes() == fake.files[MNIST_FILES[1]]
    assert not list(raw1.rglob(f"{STAGING_PREFIX}*"))

    recompressed = _gzip(fake.payloads[MNIST_PAYLOADS[0]], mtime=99, compresslevel=1)
    (mirror.root / MNIST_FILES[0]).write_bytes(recompressed)
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("mnist", tmp_path / "b.pt", raw_dir=tmp_path / "raw2", source=mirror.url)
    message = str(caught.value)
    assert mirror.url + MNIST_FILES[0] in message and "archive md5 mismatch" in message
    assert md5_of(recompressed) in message and md5_of(fake.files[MNIST_FILES[0]]) in message
    assert "data.digests.mnist" in message
    assert not (tmp_path / "b.pt").exists()
    # with the content digests the recompressed file is the same data
    tensors = prepare_dataset("mnist", tmp_path / "c.pt", raw_dir=tmp_path / "raw2",
                              source=mirror.url, digests=fake.digests)
    assert_prepared_equals(tensors, fake)


def test_plain_mnist_files_without_a_content_digest_are_refused_naming_the_key(tmp_path):
    fake = make_mnist()
    folder = local_copy(fake, tmp_path / "plain", "plain")
    with pytest.raises(ChecksumError, match=r"data\.digests\.mnist"):
        prepare_dataset("mnist", tmp_path / "m.pt", raw_dir=tmp_path / "raw", source=str(folder))
    assert not (tmp_path / "m.pt").exists()


def test_recorded_fashion_mnist_digests_refuse_other_content(tmp_path):
    """Without data.digests, fashion_mnist is checked against the release's recorded digests:
    the generated files are not the release."""
    from jacreg.sources import CONTENT_DIGESTS

    fake = make_mnist(seed=1)
    folder = local_copy(fake, tmp_path / "fm", "gz")
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("fashion_mnist", tmp_path / "f.pt", raw_dir=tmp_path / "raw",
                        source=str(folder))
    message = str(caught.value)
    for payload in MNIST_PAYLOADS:  # every file is named, with both digests
        assert str(folder / f"{payload}.gz") in message
        assert sha256_of(fake.payloads[payload]) in message
        assert CONTENT_DIGESTS["fashion_mnist"][payload].split(":")[1] in message
    assert_nothing_acceptable(tmp_path / "raw", "fashion_mnist", fake)


# --- bad files ----------------------------------------------------------------------------------

def _damage(fake: FakeDataset, name: str, kind: str) -> tuple[dict[str, bytes], dict[str, str],
                                                               str, str | None]:
    """(published files, digests, the file the error must name, the actual content digest it
    must name or None) for one kind of damage."""
    files, digests = dict(fake.files), dict(fake.digests)
    if name == "cifar10":
        payload, named = "data_batch_3", "data_batch_3"
    else:
        payload = "train-labels-idx1-ubyte"
        named = f"{payload}.gz"
    if kind == "wrong-digest":
        digests[payload] = "0" * 64
        return files, digests, named, sha256_of(fake.payloads[payload])
    if kind == "truncated":
        archive = ARCHIVE[name] if name == "cifar10" else named
        files[archive] = files[archive][: len(files[archive]) // 2]
        return files, digests, archive, None
    corrupted = bytearray(fake.payloads[payload])
    corrupted[-3] ^= 0xFF  # one label / pixel changed: still a well-formed file
    payloads = dict(fake.payloads, **{payload: bytes(corrupted)})
    if name == "cifar10":
        files[CIFAR_ARCHIVE] = cifar_archive(payloads)
    else:
        files[named] = _gzip(payloads[payload])
    return files, digests, named, sha256_of(bytes(corrupted))


@pytest.mark.parametrize("via", ["url", "local"])
@pytest.mark.parametrize("kind", ["wrong-digest", "truncated", "corrupted"])
@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_bad_file_fails_naming_it_and_leaves_nothing_acceptable(name, kind, via, mirror,
                                                                tmp_path):
    fake = MAKERS[name]()
    files, digests, named, actual = _damage(fake, name, kind)
    folder = mirror.root if via == "url" else tmp_path / "local"
    folder.mkdir(exist_ok=True)
    for file, data in files.items():
        (folder / file).write_bytes(data)
    before = snapshot(folder)
    source = mirror.url if via == "url" else str(folder)
    raw, out = tmp_path / "raw", tmp_path / f"{name}.pt"

    with pytest.raises(ChecksumError) as caught:
        prepare_dataset(name, out, raw_dir=raw, source=source, digests=digests)
    message = str(caught.value)
    origin = (mirror.url + (CIFAR_ARCHIVE if name == "cifar10" else named) if via == "url"
              else str(folder / (CIFAR_ARCHIVE if name == "cifar10" else named)))
    assert origin in message and named in message, message
    if actual is not None:  # both digests
        payload = named.removesuffix(".gz")
        assert actual in message and digests[payload] in message, message
    else:
        assert "cannot be" in message, message  # decompressed / extracted
    assert not out.exists()
    assert snapshot(folder) == before  # the source is only read
    assert_nothing_acceptable(raw, name, fake)

    # with the good files the next preparation succeeds
    publish(fake, folder)
    tensors = prepare_dataset(name, out, raw_dir=raw, source=source, digests=fake.digests)
    assert_prepared_equals(tensors, fake)


def test_bad_extracted_cifar_batch_in_a_local_directory(tmp_path):
    fake = make_cifar()
    folder = local_copy(fake, tmp_path / "cifar", "extracted")
    batch = folder / CIFAR_FOLDER / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-100])
    before = snapshot(folder)
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("cifar10", tmp_path / "c.pt", raw_dir=tmp_path / "raw",
                        source=str(folder), digests=fake.digests)
    message = str(caught.value)
    assert str(folder / CIFAR_FOLDER) in message and "test_batch" in message
    assert sha256_of(batch.read_bytes()) in message and fake.digests["test_batch"] in message
    assert snapshot(folder) == before
    assert_nothing_acceptable(tmp_path / "raw", "cifar10", fake)


def test_a_missing_file_in_a_local_directory_is_named(tmp_path):
    fake = make_mnist()
    folder = local_copy(fake, tmp_path / "m", "gz")
    (folder / MNIST_FILES[3]).unlink()
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("mnist", tmp_path / "m.pt", raw_dir=tmp_path / "raw", source=str(folder),
                        digests=fake.digests)
    assert str(folder / MNIST_FILES[3]) in str(caught.value) and "missing" in str(caught.value)
    assert_nothing_acceptable(tmp_path / "raw", "mnist", fake)


def test_unknown_file_name_in_digests_names_the_config_key(tmp_path):
    fake = make_mnist()
    folder = local_copy(fake, tmp_path / "m", "gz")
    digests = dict(fake.digests)
    digests["train-images-idx3-ubyte.gz"] = digests.pop("train-images-idx3-ubyte")
    with pytest.raises(ValueError) as caught:
        prepare_dataset("mnist", tmp_path / "m.pt", raw_dir=tmp_path / "raw", source=str(folder),
                        digests=digests)
    message = str(caught.value)
    assert "data.digests.mnist" in message and "train-images-idx3-ubyte.gz" in message
    assert "t10k-labels-idx1-ubyte" in message  # the known names
    assert not (tmp_path / "m.pt").exists()


# --- no network ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_unreachable_url_source_fails_fast_naming_the_sources_key(name, tmp_path):
    url = closed_port_url()
    raw = tmp_path / "raw"
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        prepare_dataset(name, tmp_path / f"{name}.pt", raw_dir=raw, source=url,
                        digests=MAKERS[name]().digests)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"data.sources.{name}" in message and url in message
    assert "configs/quick.yaml" in message
    assert not (tmp_path / f"{name}.pt").exists()
    assert not list(raw.rglob(f"{STAGING_PREFIX}*"))
    assert socket.getdefaulttimeout() is None  # the download timeout was restored


def test_url_source_without_the_file_fails_naming_the_sources_key(mirror, tmp_path):
    with pytest.raises(DownloadError) as caught:  # the server answers 404
        prepare_dataset("fashion_mnist", tmp_path / "f.pt", raw_dir=tmp_path / "raw",
                        source=mirror.url)
    message = str(caught.value)
    assert "data.sources.fashion_mnist" in message and "404" in message
    assert MNIST_FILES[0] in message


def test_a_source_that_never_answers_times_out(tmp_path, monkeypatch):
    """A silent peer (a dropped network, a hung server) hits the socket timeout, not a hang."""
    import jacreg.data

    monkeypatch.setattr(jacreg.data, "DOWNLOAD_TIMEOUT_S", 0.5)
    outcome: list[BaseException | None] = []

    def attempt(url: str) -> None:
        try:
            prepare_dataset("cifar10", tmp_path / "c.pt", raw_dir=tmp_path / "raw", source=url)
            outcome.append(None)
        except BaseException as error:  # handed to the main thread
            outcome.append(error)

    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        worker = threading.Thread(
            target=attempt, args=(f"http://127.0.0.1:{silent.getsockname()[1]}/",), daemon=True)
        started = time.monotonic()
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "the download hung: no socket timeout"
    assert time.monotonic() - started < 10
    assert isinstance(outcome[0], DownloadError), outcome
    assert "data.sources.cifar10" in str(outcome[0]) and "timed out" in str(outcome[0])


# --- the default source: torchvision's mirrors --------------------------------------------------

def _default_digests(name: str, fake: FakeDataset) -> dict[str, str] | None:
    """fashion_mnist has recorded content digests (of the real release): the generated files
    need theirs; mnist has none; cifar10's are torchvision's batch md5s (patched)."""
    return fake.digests if name == "fashion_mnist" else None


@pytest.mark.parametrize("name", ALL)
def test_default_source_downloads_through_torchvision_and_then_needs_no_network(
        name, mirror, tmp_path, monkeypatch):
    fake = MAKERS[name]()
    publish(fake, mirror.root)
    _torchvision_md5s(monkeypatch, name, fake, mirror.url)
    raw = tmp_path / "raw"
    tensors = prepare_dataset(name, tmp_path / "a.pt", raw_dir=raw,
                              digests=_default_digests(name, fake))
    assert_prepared_equals(tensors, fake)
    assert requested(mirror) == set(fake.files)
    for file_name in fake.files:  # kept in torchvision's layout under raw_dir
        assert (raw / RAW_FOLDER[name] / file_name).read_bytes() == fake.files[file_name]

    _torchvision_md5s(monkeypatch, name, fake, closed_port_url())
    again = prepare_dataset(name, tmp_path / "b.pt", raw_dir=raw,
                            digests=_default_digests(name, fake))
    assert_prepared_equals(again, fake)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_default_source_wrong_archive_is_moved_aside_and_downloaded_again(name, mirror, tmp_path,
                                                                         monkeypatch):
    """A corrupt file on the mirror (or an interrupted download) fails torchvision's archive
    md5: the file is moved aside to .corrupt and named; the next run downloads it again."""
    fake = MAKERS[name]()
    _torchvision_md5s(monkeypatch, name, fake, mirror.url)
    publish(fake, mirror.root)
    good = fake.files[ARCHIVE[name]]
    (mirror.root / ARCHIVE[name]).write_bytes(good[:-10] + bytes(10))
    raw, out = tmp_path / "raw", tmp_path / f"{name}.pt"
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset(name, out, raw_dir=raw)
    bad = raw / RAW_FOLDER[name] / ARCHIVE[name]
    message = str(caught.value)
    assert str(bad) in message and "checksum mismatch" in message and md5_of(good) in message
    assert md5_of(good[:-10] + bytes(10)) in message
    assert not bad.exists()  # moved aside: nothing under the accepted name
    assert bad.with_name(bad.name + ".corrupt").read_bytes() == good[:-10] + bytes(10)
    assert not out.exists()
    if name == "mnist":  # nor a decompressed copy a later run could take
        assert not bad.with_suffix("").exists()

    (mirror.root / ARCHIVE[name]).write_bytes(good)  # the mirror is repaired
    mirror.requests.clear()
    tensors = prepare_dataset(name, out, raw_dir=raw)
    assert_prepared_equals(tensors, fake)
    assert ARCHIVE[name] in requested(mirror)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_default_source_truncated_archive_on_disk_is_moved_aside_and_downloaded_again(
        name, mirror, tmp_path, monkeypatch):
    fake = MAKERS[name]()
    publish(fake, mirror.root)
    _torchvision_md5s(monkeypatch, name, fake, mirror.url)
    raw = tmp_path / "raw"
    prepare_dataset(name, tmp_path / "first.pt", raw_dir=raw)
    archive = raw / RAW_FOLDER[name] / ARCHIVE[name]
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # truncated after a successful download

    mirror.requests.clear()
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset(name, tmp_path / "second.pt", raw_dir=raw)
    assert str(archive) in str(caught.value) and "truncated or corrupted" in str(caught.value)
    assert not archive.exists()
    assert archive.with_name(archive.name + ".corrupt").stat().st_size == len(data) // 2
    assert not (tmp_path / "second.pt").exists()
    assert mirror.requests == []  # it failed on the file on disk, before any download

    tensors = prepare_dataset(name, tmp_path / "third.pt", raw_dir=raw)
    assert_prepared_equals(tensors, fake)
    assert requested(mirror) == {ARCHIVE[name]}  # only the bad file again
    assert archive.read_bytes() == data


def test_default_source_damaged_decompressed_mnist_file_is_rebuilt_from_its_archive(
        mirror, tmp_path, monkeypatch):
    fake = make_mnist()
    publish(fake, mirror.root)
    _torchvision_md5s(monkeypatch, "mnist", fake, mirror.url)
    raw = tmp_path / "raw"
    prepare_dataset("mnist", tmp_path / "a.pt", raw_dir=raw)
    decompressed = raw / "MNIST/raw/train-images-idx3-ubyte"
    decompressed.write_bytes(decompressed.read_bytes()[:1000])
    _torchvision_md5s(monkeypatch, "mnist", fake, closed_port_url())
    tensors = prepare_dataset("mnist", tmp_path / "b.pt", raw_dir=raw)
    assert_prepared_equals(tensors, fake)


def test_default_source_checks_fashion_mnist_content_after_torchvision(mirror, tmp_path,
                                                                       monkeypatch):
    """Archives that pass torchvision's md5 but whose content is not the release's are refused
    by the recorded content digests; the decompressed file is removed."""
    from jacreg.sources import CONTENT_DIGESTS

    fake = make_mnist(seed=1)
    publish(fake, mirror.root)
    _torchvision_md5s(monkeypatch, "fashion_mnist", fake, mirror.url)
    raw = tmp_path / "raw"
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset("fashion_mnist", tmp_path / "f.pt", raw_dir=raw)
    message = str(caught.value)
    decompressed = raw / "FashionMNIST/raw/train-images-idx3-ubyte"
    assert str(decompressed) in message
    assert sha256_of(fake.payloads["train-images-idx3-ubyte"]) in message
    assert CONTENT_DIGESTS["fashion_mnist"]["train-images-idx3-ubyte"].split(":")[1] in message
    assert not decompressed.exists()
    assert not (tmp_path / "f.pt").exists()


@pytest.mark.parametrize("name", ALL)
def test_default_source_without_network_fails_fast_naming_the_sources_key(name, tmp_path,
                                                                          monkeypatch):
    fake = MAKERS[name]()
    _torchvision_md5s(monkeypatch, name, fake, closed_port_url())
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        prepare_dataset(name, tmp_path / f"{name}.pt", raw_dir=tmp_path / "raw")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"data.sources.{name}" in message and "configs/quick.yaml" in message
    assert not (tmp_path / f"{name}.pt").exists()
    assert socket.getdefaulttimeout() is None


# --- parse_source -------------------------------------------------------------------------------

def test_parse_source_kinds(tmp_path):
    assert parse_source("mnist", None).kind == "default"
    url = parse_source("mnist", "https://example.org/mnist")
    assert (url.kind, url.location) == ("url", "https://example.org/mnist/")
    local = parse_source("mnist", str(tmp_path))
    assert (local.kind, local.location) == ("local", str(tmp_path.resolve()))
    spaced = tmp_path / "a b"
    spaced.mkdir()
    assert parse_source("mnist", spaced.as_uri()).location == str(spaced.resolve())
    assert parse_source("mnist", f"file://localhost{tmp_path}").location == str(tmp_path.resolve())


@pytest.mark.parametrize("value,expected", [
    ("{missing}", r"data\.sources\.cifar10.*not a directory"),
    ("file://{missing}", r"data\.sources\.cifar10.*not a directory"),
    ("{file}", r"data\.sources\.cifar10.*not a directory"),
    ("ftp://example.org/cifar/", r"data\.sources\.cifar10.*unsupported scheme"),
    ("s3://bucket/cifar", r"data\.sources\.cifar10.*unsupported scheme"),
    ("file://fileserver/shared/cifar", r"data\.sources\.cifar10.*file:///path"),
])
def test_parse_source_rejects_naming_the_key(value, expected, tmp_path):
    (tmp_path / "a-file").write_text("")
    value = value.format(missing=tmp_path / "nowhere", file=tmp_path / "a-file")
    with pytest.raises(ValueError, match=expected):
        parse_source("cifar10", value)


def test_nonexistent_local_source_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"data\.sources\.mnist"):
        prepare_dataset("mnist", tmp_path / "m.pt", raw_dir=tmp_path / "raw",
                        source=str(tmp_path / "nowhere"))
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "raw").exists()


# --- the command line ---------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([sys.executable, "-m", "jacreg.cli", "prepare", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_prepare_with_sources_and_digests(mirror, tmp_path):
    fake = make_mnist()
    publish(fake, mirror.root)
    raw = str(tmp_path / "raw")
    digests = json.dumps({"mnist": fake.digests, "cifar10": {}})

    started = time.monotonic()
    proc = _cli("--dataset", "mnist", "--out", str(tmp_path / "x.pt"), "--raw-dir", raw,
                "--sources", json.dumps({"mnist": closed_port_url()}), "--digests", digests)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    assert "data.sources.mnist" in proc.stderr and "configs/quick.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.pt").exists()

    wrong = json.dumps({"mnist": dict(fake.digests, **{MNIST_PAYLOADS[2]: "f" * 64})})
    proc = _cli("--dataset", "mnist", "--out", str(tmp_path / "y.pt"), "--raw-dir", raw,
                "--sources", json.dumps({"mnist": mirror.url}), "--digests", wrong)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert mirror.url + MNIST_FILES[2] in proc.stderr and "f" * 64 in proc.stderr
    assert fake.digests[MNIST_PAYLOADS[2]] in proc.stderr
    assert not (tmp_path / "y.pt").exists()

    proc = _cli("--dataset", "mnist", "--out", str(tmp_path / "z.pt"), "--raw-dir", raw,
                "--sources", json.dumps({"mnist": mirror.url}), "--digests", digests)
    assert proc.returncode == 0, proc.stderr
    assert_prepared_equals(load_prepared(tmp_path / "z.pt"), fake)

    proc = _cli("--dataset", "mnist", "--out", str(tmp_path / "w.pt"), "--raw-dir", raw,
                "--sources", json.dumps({"mnist": str(tmp_path / "nowhere")}))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "data.sources.mnist" in proc.stderr and "nowhere" in proc.stderr


def test_cli_prepare_verifies_in_place_without_the_source(mirror, tmp_path):
    """The files already verified under raw/ are enough: the source is not contacted."""
    fake = make_cifar()
    local = local_copy(fake, tmp_path / "local", "gz")
    raw = str(tmp_path / "raw")
    digests = json.dumps({"cifar10": fake.digests})
    proc = _cli("--dataset", "cifar10", "--out", str(tmp_path / "a.pt"), "--raw-dir", raw,
                "--sources", json.dumps({"cifar10": local.as_uri()}), "--digests", digests)
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(local)
    proc = _cli("--dataset", "cifar10", "--out", str(tmp_path / "b.pt"), "--raw-dir", raw,
                "--sources", json.dumps({"cifar10": closed_port_url()}), "--digests", digests)
    assert proc.returncode == 0, proc.stderr
    assert_prepared_equals(load_prepared(tmp_path / "b.pt"), fake)
