"""Offline tests of the torchvision download path: download -> verify -> prepare.

Small files in the real formats (gzipped IDX files for MNIST and Fashion-MNIST, the pickled
batches of ``cifar-10-python.tar.gz`` for CIFAR-10) are generated here and served by a local
HTTP server on 127.0.0.1; the ``mirror`` points at it and ``checksums`` gives their md5. Everything
else is torchvision's real code: its dataset classes, download, md5 checks and file readers.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from jacreg.data import ChecksumError, DownloadError, load_prepared, prepare_dataset

REPO = Path(__file__).resolve().parents[1]
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_LABELS = ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"]
RAW_FOLDER = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "."}
ARCHIVE = {"mnist": MNIST_FILES[0], "fashion_mnist": MNIST_FILES[0], "cifar10": CIFAR_ARCHIVE}


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)  # deterministic bytes, so deterministic md5


def idx_images(images: np.ndarray) -> bytes:
    """IDX3: big-endian magic 2051 (uint8, 3 dims), the dims, then the pixels."""
    n, rows, cols = images.shape
    return np.array([2051, n, rows, cols], dtype=">i4").tobytes() + images.tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    """IDX1: big-endian magic 2049 (uint8, 1 dim), the count, then the labels."""
    return np.array([2049, len(labels)], dtype=">i4").tobytes() + labels.astype(np.uint8).tobytes()


@dataclass
class FakeDataset:
    """Generated raw files (name -> bytes) and the arrays they hold, (N, C, H, W) uint8."""

    files: dict[str, bytes]
    checksums: dict[str, str]  # every file torchvision checks -> its md5
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    extra: dict[str, bytes] = field(default_factory=dict)


def make_mnist(n_train: int = 60, n_test: int = 20, seed: int = 0) -> FakeDataset:
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    y_train = rng.integers(0, 10, n_train).astype(np.int64)
    y_test = rng.integers(0, 10, n_test).astype(np.int64)
    contents = [idx_images(x_train), idx_labels(y_train), idx_images(x_test), idx_labels(y_test)]
    files = {name: _gzip(data) for name, data in zip(MNIST_FILES, contents, strict=True)}
    return FakeDataset(files, {name: md5_of(data) for name, data in files.items()},
                       x_train[:, None], y_train, x_test[:, None], y_test)


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
    members = {f"data_batch_{i + 1}": batch(x_train[i * per:(i + 1) * per],
                                            y_train[i * per:(i + 1) * per]) for i in range(5)}
    members["test_batch"] = batch(x_test, y_test)
    members["batches.meta"] = pickle.dumps({"label_names": CIFAR_LABELS}, protocol=2)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{CIFAR_FOLDER}/{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    checksums = {CIFAR_ARCHIVE: md5_of(archive)}
    checksums.update({name: md5_of(data) for name, data in members.items()})
    return FakeDataset({CIFAR_ARCHIVE: archive}, checksums, x_train, y_train, x_test, y_test,
                       extra=members)


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


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_download_verify_prepare_through_torchvision(name, mirror, tmp_path):
    fake = MAKERS[name]()
    publish(fake, mirror.root)
    raw, out = tmp_path / "raw", tmp_path / "prepared" / f"{name}.pt"
    tensors = prepare_dataset(name, out, raw_dir=raw, mirror=mirror.url,
                              checksums=fake.checksums)
    assert_prepared_equals(tensors, fake)
    assert_prepared_equals(load_prepared(out), fake)
    channels, size = (3, 32) if name == "cifar10" else (1, 28)
    assert tensors["x_test"].shape[1:] == (channels, size, size)
    assert requested(mirror) == set(fake.files)
    for file_name in fake.files:  # kept in torchvision's layout under raw_dir
        assert (raw / RAW_FOLDER[name] / file_name).is_file()

    # a second preparation verifies the raw files and needs no network
    again = prepare_dataset(name, tmp_path / "again.pt", raw_dir=raw, mirror=closed_port_url(),
                            checksums=fake.checksums)
    assert_prepared_equals(again, fake)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_wrong_checksum_fails_naming_the_file_and_leaves_nothing_acceptable(name, mirror,
                                                                           tmp_path):
    fake = MAKERS[name]()
    publish(fake, mirror.root)
    raw, out = tmp_path / "raw", tmp_path / f"{name}.pt"
    wrong = dict(fake.checksums, **{ARCHIVE[name]: "0" * 32})
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset(name, out, raw_dir=raw, mirror=mirror.url, checksums=wrong)
    bad = raw / RAW_FOLDER[name] / ARCHIVE[name]
    message = str(caught.value)
    assert str(bad) in message and "checksum mismatch" in message and "0" * 32 in message
    assert not bad.exists()  # moved aside: nothing under the accepted name
    assert bad.with_name(bad.name + ".corrupt").read_bytes() == fake.files[ARCHIVE[name]]
    assert not out.exists()
    if name == "mnist":  # nor a decompressed copy a later run could take
        assert not bad.with_suffix("").exists()
    # no file under raw/ that a later run would accept
    accepted = {p.name for p in raw.rglob("*") if p.is_file() and not p.name.endswith(".corrupt")}
    assert ARCHIVE[name] not in accepted

    # with the right checksum the next run downloads it again and succeeds
    mirror.requests.clear()
    tensors = prepare_dataset(name, out, raw_dir=raw, mirror=mirror.url,
                              checksums=fake.checksums)
    assert_prepared_equals(tensors, fake)
    assert ARCHIVE[name] in requested(mirror)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_truncated_raw_file_is_detected_moved_aside_and_downloaded_again(name, mirror,
                                                                        tmp_path):
    fake = MAKERS[name]()
    publish(fake, mirror.root)
    raw = tmp_path / "raw"
    prepare_dataset(name, tmp_path / "first.pt", raw_dir=raw, mirror=mirror.url,
                    checksums=fake.checksums)
    archive = raw / RAW_FOLDER[name] / ARCHIVE[name]
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # truncated after a successful download

    mirror.requests.clear()
    with pytest.raises(ChecksumError) as caught:
        prepare_dataset(name, tmp_path / "second.pt", raw_dir=raw, mirror=mirror.url,
                        checksums=fake.checksums)
    assert str(archive) in str(caught.value) and "truncated or corrupted" in str(caught.value)
    assert not archive.exists()
    assert archive.with_name(archive.name + ".corrupt").stat().st_size == len(data) // 2
    assert not (tmp_path / "second.pt").exists()
    assert mirror.requests == []  # it failed on the file on disk, before any download

    tensors = prepare_dataset(name, tmp_path / "third.pt", raw_dir=raw, mirror=mirror.url,
                              checksums=fake.checksums)
    assert_prepared_equals(tensors, fake)
    assert requested(mirror) == {ARCHIVE[name]}  # only the bad file again
    assert archive.read_bytes() == data


def test_damaged_decompressed_mnist_file_is_rebuilt_from_its_verified_archive(mirror, tmp_path):
    fake = make_mnist()
    publish(fake, mirror.root)
    raw = tmp_path / "raw"
    prepare_dataset("mnist", tmp_path / "a.pt", raw_dir=raw, mirror=mirror.url,
                    checksums=fake.checksums)
    decompressed = raw / "MNIST/raw/train-images-idx3-ubyte"
    decompressed.write_bytes(decompressed.read_bytes()[:1000])
    tensors = prepare_dataset("mnist", tmp_path / "b.pt", raw_dir=raw, mirror=closed_port_url(),
                              checksums=fake.checksums)
    assert_prepared_equals(tensors, fake)


def test_no_network_fails_fast_naming_the_mirror_key_and_the_quick_profile(tmp_path):
    url = closed_port_url()
    for name in ("mnist", "cifar10"):
        started = time.monotonic()
        with pytest.raises(DownloadError) as caught:
            prepare_dataset(name, tmp_path / f"{name}.pt", raw_dir=tmp_path / "raw", mirror=url)
        assert time.monotonic() - started < 60
        message = str(caught.value)
        assert "data.mirror" in message and "configs/quick.yaml" in message and url in message
        assert not (tmp_path / f"{name}.pt").exists()
    assert socket.getdefaulttimeout() is None  # the download timeout was restored


def test_a_mirror_that_never_answers_times_out(tmp_path, monkeypatch):
    """A silent peer (a dropped network, a hung mirror) hits the socket timeout, not a hang."""
    import jacreg.data

    monkeypatch.setattr(jacreg.data, "DOWNLOAD_TIMEOUT_S", 0.5)
    outcome: list[BaseException | None] = []

    def attempt(url: str) -> None:
        try:
            prepare_dataset("cifar10", tmp_path / "c.pt", raw_dir=tmp_path / "raw", mirror=url)
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
    assert "data.mirror" in str(outcome[0]) and "timed out" in str(outcome[0])


def test_cli_prepare_reports_the_error_and_treats_an_empty_mirror_as_none(mirror, tmp_path):
    fake = make_cifar()
    publish(fake, mirror.root)
    base = [sys.executable, "-m", "jacreg.cli", "prepare", "--dataset", "cifar10",
            "--raw-dir", str(tmp_path / "raw"), "--checksums",
            json.dumps({"cifar10": fake.checksums, "mnist": {}})]
    started = time.monotonic()
    proc = subprocess.run([*base, "--out", str(tmp_path / "x.pt"), "--mirror", closed_port_url()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    assert "data.mirror" in proc.stderr and "configs/quick.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = subprocess.run([*base, "--out", str(tmp_path / "y.pt"), "--mirror", mirror.url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_prepared_equals(load_prepared(tmp_path / "y.pt"), fake)

    # the workflow passes "" when data.mirror is null: torchvision's own mirrors, which are
    # not needed (nor reachable here) because the raw files on disk pass their checksums
    proc = subprocess.run([*base, "--out", str(tmp_path / "z.pt"), "--mirror", ""],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(load_prepared(tmp_path / "z.pt")["x_test"], torch.from_numpy(fake.x_test))


def test_unknown_file_name_in_checksums_names_the_config_key(tmp_path):
    with pytest.raises(ValueError, match=r"data\.checksums\.mnist.*train-images"):
        prepare_dataset("mnist", tmp_path / "m.pt", raw_dir=tmp_path / "raw",
                        mirror=closed_port_url(), checksums={"train-images.gz": "0" * 32})
