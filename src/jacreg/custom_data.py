"""Your own datasets: config ``data.custom.<name>``, read, checked and prepared.

Each entry produces the prepared file of the built-in datasets (:mod:`jacreg.data`): ``train``,
``attack`` and ``test`` splits of images (N, C, H, W), uint8 0-255 or float32 in [0, 1], int64
labels 0..K-1, and the SHA-256 of the tensors; it also records the dataset's description
(channels, height, width, classes, class names) that the registry holds for the built-ins. The
channels, image size and number of classes are read from the data, never configured.

Formats (``format:``):

- ``npz``: a NumPy archive (``path``) with ``x_train, y_train, x_test, y_test``, optionally
  ``x_attack, y_attack`` and ``class_names`` (strings). Images N x H x W, N x H x W x C or
  N x C x H x W (``layout: NHWC|NCHW`` where the shape does not tell), uint8 0-255 (or another
  integer type within 0-255) or float in [0, 1]. Loaded with ``allow_pickle=False``.
- ``folder``: ``path/train/<class>/*.png`` and ``path/test/<class>/...`` (optionally
  ``path/attack/<class>/...``), the class-per-subfolder layout of torchvision's ``ImageFolder``,
  which reads it: class names are the sorted subfolder names; ``resize: S`` or ``[H, W]``
  resizes every image (bilinear, antialiased); ``mode: L|RGB`` (default: L when every image is
  grayscale, else RGB).
- ``torchvision``: a dataset class of ``torchvision.datasets`` by name (``class: KMNIST``), with
  constructor ``kwargs`` (``{split: balanced}`` for EMNIST) and the training/test selection
  ``train_kwargs``/``test_kwargs`` (default ``{train: true}``/``{train: false}``, or
  ``{split: train}``/``{split: test}`` for classes that take a ``split``). Its files come from
  ``data.sources.<name>`` like the built-ins': null (torchvision's download and checks), or, for
  the MNIST and CIFAR families (MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100), an http(s)
  base URL or local directory verified as :mod:`jacreg.sources` does (``data.digests.<name>``
  gives content digests, else torchvision's archive md5s are checked); for other classes a
  local directory is the ``root`` torchvision reads (no download).

Without an attack split, ``attack_holdout`` training images (default ``min(10000, n_train // 5)``,
the built-ins' rule) are held out for crafting UAPs, chosen at random with a fixed seed (a
dataset sorted by class still gives every class to both parts); ``attack_holdout: 0`` crafts
UAPs on the training images themselves (as the quick profile does).

Checks, each failing with the file and the problem: a missing or unreadable file, arrays of the
wrong shape, mismatched lengths of images and labels, an empty split, non-integer labels or
labels outside 0..K-1, a class missing from a split, values outside the stated range, NaN or
infinite values, images of different sizes. The workflow runs :func:`check_source` while it
reads the configuration, before any job, for every dataset that still needs preparing; the
preparation job checks again.
"""

from __future__ import annotations

import inspect
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: the registry names of :mod:`jacreg.data` (kept here so the configuration is checked without
#: importing torch; tests/test_custom_data.py checks that both agree)
BUILTIN_DATASETS = ("mnist5k", "mnist", "fashion_mnist", "cifar10")
FORMATS = ("npz", "folder", "torchvision")
#: the keys each format allows besides ``format`` (checked by :func:`entry_problems`)
FORMAT_KEYS = {
    "npz": {"path", "class_names", "attack_holdout", "layout"},
    "folder": {"path", "attack_holdout", "resize", "mode"},
    "torchvision": {"class", "kwargs", "train_kwargs", "test_kwargs", "class_names",
                    "attack_holdout", "layout"},
}
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "x_attack", "y_attack", "class_names")
#: torchvision.datasets.folder.IMG_EXTENSIONS (checked by the tests)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_ATTACK_HOLDOUT = 10_000
HOLDOUT_SEED = 20210422
MAX_LISTED = 5  # problems of one kind listed before "... and n more"


class DataError(ValueError):
    """Your data cannot be used; the message names the config key, the file and every problem."""


@dataclass(frozen=True)
class CustomDataset:
    """One ``data.custom.<name>`` entry (already checked against the schema)."""

    name: str
    format: str
    path: Path | None = None
    cls: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    train_kwargs: Mapping[str, Any] | None = None
    test_kwargs: Mapping[str, Any] | None = None
    class_names: tuple[str, ...] | None = None
    attack_holdout: int | None = None
    resize: tuple[int, int] | None = None
    layout: str | None = None
    mode: str | None = None

    @classmethod
    def from_config(cls, name: str, entry: Mapping[str, Any]) -> CustomDataset:
        resize = entry.get("resize")
        if isinstance(resize, int):
            resize = (resize, resize)
        names = entry.get("class_names")
        return cls(name=name, format=entry["format"],
                   path=Path(entry["path"]).expanduser() if entry.get("path") else None,
                   cls=entry.get("class"), kwargs=dict(entry.get("kwargs") or {}),
                   train_kwargs=entry.get("train_kwargs"), test_kwargs=entry.get("test_kwargs"),
                   class_names=tuple(str(c) for c in names) if names else None,
                   attack_holdout=entry.get("attack_holdout"),
                   resize=tuple(resize) if resize else None,  # type: ignore[arg-type]
                   layout=entry.get("layout"), mode=entry.get("mode"))

    @property
    def key(self) -> str:
        return f"data.custom.{self.name}"

    def describe(self) -> str:
        if self.format == "torchvision":
            return f"torchvision.datasets.{self.cls}"
        return str(self.path)


@dataclass
class Splits:
    """The arrays read from the source: split -> (images N x C x H x W, labels), class names."""

    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    class_names: tuple[str, ...] | None
    labels: dict[str, tuple[str, str]]  # split -> how messages name its images and its labels
    layout: str | None = None  # of 4-D image arrays; None: the config's, else from the shape


def entry_problems(name: str, entry: Mapping[str, Any]) -> list[str]:
    """Cross-key problems of one ``data.custom`` entry that the schema cannot express."""
    key = f"config key 'data.custom.{name}'"
    problems = []
    if name in BUILTIN_DATASETS:
        problems.append(f"{key}: {name!r} is a built-in dataset; give yours another name")
    fmt = entry.get("format")
    if fmt not in FORMAT_KEYS:
        return problems  # the schema names the allowed formats
    extra = sorted(set(entry) - FORMAT_KEYS[fmt] - {"format"})
    if extra:
        problems.append(f"{key}: {extra} do not apply to format {fmt}; allowed: "
                        f"{', '.join(sorted(FORMAT_KEYS[fmt]))}")
    if fmt in ("npz", "folder") and not entry.get("path"):
        problems.append(f"{key}: format {fmt} needs 'path' (the "
                        f"{'.npz file' if fmt == 'npz' else 'folder holding train/ and test/'})")
    if fmt == "torchvision" and not entry.get("class"):
        problems.append(f"{key}: format torchvision needs 'class' (a class of "
                        "torchvision.datasets, e.g. KMNIST)")
    return problems


# --------------------------------------------------------------------------- array checks


def to_nchw(x: np.ndarray, layout: str | None, label: str,
            problems: list[str]) -> np.ndarray | None:
    """Images as N x C x H x W; None (and a problem) when the shape is not an image batch."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        problems.append(f"{label}: shape {x.shape}: images must be N x H x W, N x H x W x C or "
                        "N x C x H x W")
        return None
    if layout is None:
        first, last = x.shape[1] in (1, 3, 4), x.shape[3] in (1, 3, 4)
        if first == last:
            problems.append(f"{label}: shape {x.shape}: cannot tell channels-first from "
                            "channels-last; set 'layout: NCHW' or 'layout: NHWC'")
            return None
        layout = "NCHW" if first else "NHWC"
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


def _image_values(x: np.ndarray, label: str, problems: list[str]) -> np.ndarray | None:
    """uint8 images as they are, other integers within 0-255 as uint8, floats in [0, 1] as
    float32; None (and a problem) otherwise."""
    kind = x.dtype.kind
    if x.dtype == np.uint8:
        return x
    if kind in "iu":
        low, high = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if low < 0 or high > 255:
            problems.append(f"{label}: values outside 0..255 (min {low}, max {high}): integer "
                            "images must be 0-255")
            return None
        return x.astype(np.uint8)
    if kind == "f":
        finite = np.isfinite(x)
        if not finite.all():
            n_nan = int(np.isnan(x).sum())
            problems.append(f"{label}: {n_nan} NaN and {int((~finite).sum()) - n_nan} infinite "
                            "values")
            return None
        low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            problems.append(f"{label}: values outside [0, 1] (min {low:g}, max {high:g}): float "
                            "images must be in [0, 1] (store uint8 for 0-255)")
            return None
        return x.astype(np.float32)
    problems.append(f"{label}: dtype {x.dtype} is not an image type; allowed: uint8 0-255 or "
                    "float in [0, 1]")
    return None


def _labels(y: np.ndarray, label: str, problems: list[str]) -> np.ndarray | None:
    if y.ndim != 1:
        problems.append(f"{label}: shape {y.shape}: labels must be a 1-D array of class indices"
                        + (" (one-hot? store y.argmax(1))" if y.ndim == 2 else ""))
        return None
    if y.dtype.kind not in "iu":
        problems.append(f"{label}: dtype {y.dtype}: labels must be integers 0..K-1")
        return None
    return y.astype(np.int64)


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def check_splits(raw: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 labels: Mapping[str, tuple[str, str]],
                 class_names: Sequence[str] | None, layout: str | None,
                 ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...], list[str]]:
    """Check and normalize the splits: images N x C x H x W (uint8, or float32 for all splits
    when any split is float), int64 labels. Returns (arrays, class names, problems)."""
    problems: list[str] = []
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (x, y) in raw.items():
        xl, yl = labels[split]
        nchw = to_nchw(np.asarray(x), layout, xl, problems)
        images = _image_values(nchw, xl, problems) if nchw is not None else None
        ys = _labels(np.asarray(y), yl, problems)
        if images is not None and len(images) == 0:
            problems.append(f"{xl}: empty split (no images)")
            images = None
        if images is not None and ys is not None and len(images) != len(ys):
            problems.append(f"{xl} has {len(images)} images but {yl} has {len(ys)} labels")
            images = None
        if images is not None and ys is not None:
            arrays[split] = (images, ys)
    if problems:
        return arrays, (), problems
    shapes = {split: x.shape[1:] for split, (x, _) in arrays.items()}
    reference = shapes["train"]
    for split, shape in shapes.items():
        if shape != reference:
            problems.append(f"{labels[split][0]}: images are {_shape(shape)} but the "
                            f"training images are {_shape(reference)}")
    if len({x.dtype for x, _ in arrays.values()}) > 1:  # uint8 beside float: all as float32
        arrays = {s: (x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x, y)
                  for s, (x, y) in arrays.items()}
    top = max(int(y.max()) for _, y in arrays.values())
    n_classes = len(class_names) if class_names else top + 1
    origin = "class_names" if class_names else "the largest label + 1"
    if n_classes < 2:
        problems.append(f"{len(class_names or [0])} class(es): a classifier needs at least 2")
    for split, (_, y) in arrays.items():
        bad = np.flatnonzero((y < 0) | (y >= n_classes))
        if len(bad):
            problems.append(f"{labels[split][1]}: {len(bad)} labels outside "
                            f"0..{n_classes - 1} (K = {n_classes} from {origin}), e.g. "
                            f"{int(y[bad[0]])} at index {int(bad[0])}")
            continue
        missing = sorted(set(range(n_classes)) - set(np.unique(y).tolist()))
        if missing:
            problems.append(f"{labels[split][1]}: class(es) "
                            f"{_listed([_class(c, class_names) for c in missing])} missing from "
                            f"the {split} split")
    names = tuple(class_names) if class_names else tuple(str(k) for k in range(n_classes))
    return arrays, names, problems


def _shape(shape: Sequence[int]) -> str:
    return " x ".join(map(str, shape)) + " (C x H x W)"


def _class(index: int, names: Sequence[str] | None) -> str:
    return f"{index} ({names[index]!r})" if names else str(index)


def _fail(ds: CustomDataset, where: str, problems: Sequence[str]) -> DataError:
    return DataError(f"config key '{ds.key}' ({where}):\n  - " + "\n  - ".join(problems))


# --------------------------------------------------------------------------- npz


def _read_npz(ds: CustomDataset) -> Splits:
    path = ds.path
    assert path is not None
    if not path.is_file():
        raise _fail(ds, str(path), [f"{path}: no such file (config key '{ds.key}.path', "
                                    "relative to the directory Snakemake runs in)"])
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise _fail(ds, str(path), [f"{path}: not a readable .npz archive ({error})"]) from error
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _fail(ds, str(path), [f"{path}: a single .npy array, not an .npz archive of "
                                    "x_train, y_train, x_test, y_test"])
    problems: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    with loaded:
        unknown = sorted(set(loaded.files) - set(NPZ_ARRAYS))
        if unknown:
            problems.append(f"{path}: unexpected array(s) {unknown}; allowed: "
                            f"{', '.join(NPZ_ARRAYS)}")
        for key in loaded.files:
            if key not in NPZ_ARRAYS:
                continue
            try:
                arrays[key] = loaded[key]
            except ValueError as error:  # object arrays need pickle: refused
                problems.append(f"{path}: {key}: refused: {error} (store numeric arrays)")
            except (OSError, EOFError, zipfile.BadZipFile) as error:
                problems.append(f"{path}: {key}: unreadable ({error})")
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key not in arrays and not any(key in p for p in problems):
            problems.append(f"{path}: missing array {key!r} (needed: x_train, y_train, x_test, "
                            "y_test; optional: x_attack, y_attack, class_names)")
    if ("x_attack" in arrays) != ("y_attack" in arrays):
        problems.append(f"{path}: x_attack and y_attack go together; only one is there")
    names = ds.class_names
    if "class_names" in arrays:
        stored = arrays.pop("class_names")
        if stored.ndim != 1 or stored.dtype.kind not in "USiu":
            problems.append(f"{path}: class_names: must be a 1-D array of strings")
        else:
            from_file = tuple(str(c) for c in stored.tolist())
            if names is not None and names != from_file:
                problems.append(f"{path}: class_names {list(from_file)} differ from the config's "
                                f"'{ds.key}.class_names' {list(names)}")
            names = names or from_file
    if problems:
        raise _fail(ds, str(path), problems)
    splits = [s for s in ("train", "attack", "test") if f"x_{s}" in arrays]
    return Splits({s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in splits}, names,
                  {s: (f"{path}: x_{s}", f"{path}: y_{s}") for s in splits})


# --------------------------------------------------------------------------- image folders


@dataclass
class FolderScan:
    """The image files of a class-per-subfolder tree: split -> [(file, class index)]."""

    classes: tuple[str, ...]
    files: dict[str, list[tuple[Path, int]]]
    size: tuple[int, int] | None  # (H, W) of every image (None: resized)
    mode: str


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def scan_folder(ds: CustomDataset) -> FolderScan:
    """Check the layout and every image header (PIL, no decoding) of a folder dataset."""
    from PIL import Image, UnidentifiedImageError

    root = ds.path
    assert root is not None
    where = str(root)
    if not root.is_dir():
        raise _fail(ds, where, [f"{root}: no such folder (config key '{ds.key}.path', relative "
                                "to the directory Snakemake runs in)"])
    problems: list[str] = []
    classes_by_split: dict[str, list[str]] = {}
    for split in ("train", "test", "attack"):
        folder = root / split
        if not folder.is_dir():
            if split != "attack":
                problems.append(f"{folder}: missing (a {split}/ folder with one subfolder per "
                                "class)")
            continue
        classes_by_split[split] = sorted(p.name for p in folder.iterdir()
                                         if p.is_dir() and not p.name.startswith("."))
        loose = [p.name for p in folder.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            problems.append(f"{folder}: image file(s) outside a class subfolder: "
                            f"{_listed(sorted(loose))}")
    if problems:
        raise _fail(ds, where, problems)
    classes = classes_by_split["train"]
    if len(classes) < 2:
        problems.append(f"{root / 'train'}: {len(classes)} class subfolder(s); a classifier "
                        "needs at least 2")
    for split, names in classes_by_split.items():
        if split == "train":
            continue
        missing = sorted(set(classes) - set(names))
        extra = sorted(set(names) - set(classes))
        if missing:
            problems.append(f"{root / split}: class(es) {_listed(missing)} missing from the "
                            f"{split} split (present in train/)")
        if extra:
            problems.append(f"{root / split}: class(es) {_listed(extra)} not in train/")
    files: dict[str, list[tuple[Path, int]]] = {}
    sizes: dict[tuple[int, int], Path] = {}
    modes: set[str] = set()
    odd_size: list[str] = []
    for split in classes_by_split:
        files[split] = []
        for index, name in enumerate(classes):
            folder = root / split / name
            found = _image_files(folder) if folder.is_dir() else []
            if folder.is_dir() and not found:
                problems.append(f"{folder}: no image files (class {name!r} missing from the "
                                f"{split} split; extensions read: {', '.join(IMAGE_EXTENSIONS)})")
            for path in found:
                try:
                    with Image.open(path) as image:
                        width, height = image.size
                        modes.add(image.mode)
                except (OSError, UnidentifiedImageError, ValueError) as error:
                    problems.append(f"{path}: not a readable image ({error})")
                    continue
                files[split].append((path, index))
                if (height, width) not in sizes:
                    sizes[(height, width)] = path
                    if len(sizes) > 1 and ds.resize is None:
                        odd_size.append(f"{path} is {height} x {width}")
    if odd_size:
        first_size, first = next(iter(sizes.items()))
        problems.append(f"images of different sizes without 'resize': {first} is "
                        f"{first_size[0]} x {first_size[1]} (H x W), but {_listed(odd_size)}; "
                        f"set '{ds.key}.resize: [H, W]'")
    if problems:
        raise _fail(ds, where, problems)
    mode = ds.mode or ("L" if modes <= {"1", "L"} else "RGB")
    size = ds.resize or (next(iter(sizes)) if sizes else None)
    return FolderScan(tuple(classes), files, size, mode)


def _read_folder(ds: CustomDataset) -> Splits:
    """Decode every image with torchvision's ImageFolder (resize and mode conversion applied)."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.datasets import ImageFolder

    scan = scan_folder(ds)

    def loader(path: str) -> Image.Image:
        with Image.open(path) as image:
            image = image.convert(scan.mode)
            if ds.resize is not None:
                image = TF.resize(image, list(ds.resize), antialias=True)
            return image

    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    problems: list[str] = []
    for split, expected in scan.files.items():
        folder = ds.path / split  # type: ignore[operator]
        reader = ImageFolder(str(folder), loader=loader)
        if tuple(reader.classes) != scan.classes:
            raise _fail(ds, str(folder), [f"{folder}: classes {reader.classes} differ from "
                                          f"train/'s {list(scan.classes)}"])
        if [(Path(p), i) for p, i in reader.samples] != expected:
            raise _fail(ds, str(folder), [f"{folder}: changed while it was read"])
        images = []
        for index in range(len(reader)):
            try:
                image, _ = reader[index]
            except (OSError, ValueError) as error:
                problems.append(f"{reader.samples[index][0]}: cannot be decoded ({error})")
                continue
            images.append(np.asarray(image, dtype=np.uint8))
        if not problems:
            arrays[split] = (np.stack(images), np.asarray(reader.targets, dtype=np.int64))
    if problems:
        raise _fail(ds, str(ds.path), problems)
    root = ds.path
    assert root is not None
    return Splits(arrays, scan.classes,
                  {s: (f"{root / s}/ images", f"{root / s}/ class folders") for s in arrays},
                  layout="NHWC")


# --------------------------------------------------------------------------- torchvision


def torchvision_family(cls: type) -> str | None:
    """"mnist" or "cifar" when jacreg's verified sources (URL, local directory, digests) know
    the class's file layout; None otherwise."""
    import torchvision.datasets as tvd

    if getattr(cls, "download", None) is tvd.MNIST.download and isinstance(
            getattr(cls, "resources", None), list):
        return "mnist"
    if isinstance(cls, type) and issubclass(cls, tvd.CIFAR10):
        return "cifar"
    return None


def torchvision_class(ds: CustomDataset) -> type:
    import torchvision
    import torchvision.datasets as tvd

    cls = getattr(tvd, ds.cls or "", None)
    if not (isinstance(cls, type) and issubclass(cls, tvd.VisionDataset)):
        raise _fail(ds, f"{ds.key}.class", [
            f"torchvision.datasets has no dataset class {ds.cls!r} (torchvision "
            f"{torchvision.__version__}); e.g. KMNIST, EMNIST, SVHN, CIFAR100, USPS"])
    return cls


def _split_kwargs(ds: CustomDataset, cls: type, train: bool) -> dict[str, Any]:
    given = ds.train_kwargs if train else ds.test_kwargs
    if given is not None:
        return dict(given)
    import torchvision.datasets as tvd

    params = inspect.signature(cls.__init__).parameters
    if "train" in params or issubclass(cls, tvd.MNIST):  # EMNIST passes **kwargs to MNIST
        return {"train": train}
    if "split" in params:
        return {"split": "train" if train else "test"}
    raise _fail(ds, f"torchvision.datasets.{ds.cls}", [
        f"cannot tell how torchvision.datasets.{ds.cls} selects training and test data; give "
        f"'{ds.key}.train_kwargs' and '{ds.key}.test_kwargs'"])


def source_problems(ds: CustomDataset, source: str | None,
                    digests: Mapping[str, str] | None) -> list[str]:
    """What ``data.sources.<name>`` and ``data.digests.<name>`` cannot do for this class."""
    cls = torchvision_class(ds)
    family = torchvision_family(cls)
    plain = not ds.kwargs and ds.train_kwargs is None and ds.test_kwargs is None
    problems = []
    if (family is None or not plain) and source and source.startswith(("http://", "https://")):
        problems.append(f"config key 'data.sources.{ds.name}': an http(s) URL works for the "
                        "MNIST and CIFAR families without kwargs only (jacreg knows their file "
                        f"names); for torchvision.datasets.{ds.cls} give null (torchvision's own "
                        "download) or a local directory holding torchvision's layout")
    if (family is None or not plain) and digests:
        problems.append(f"config key 'data.digests.{ds.name}': content digests apply to the "
                        "MNIST and CIFAR families without kwargs only")
    return problems


def _dataset_arrays(ds: CustomDataset, dataset: Any, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a torchvision dataset: its ``data`` and ``targets``/``labels``
    arrays when it has them, else every item decoded."""
    data = getattr(dataset, "data", None)
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = getattr(dataset, "labels", None)
    if data is not None and targets is not None and hasattr(data, "shape") \
            and len(data) == len(dataset) and np.asarray(data).ndim in (3, 4):
        return np.asarray(data), np.asarray(targets)
    # decoded items are PIL images: H x W or H x W x C
    images, labels = [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        images.append(np.asarray(image))
        labels.append(int(target))
    if not images:
        raise _fail(ds, label, [f"{label}: empty split (no images)"])
    if len({a.shape for a in images}) > 1:
        raise _fail(ds, label, [f"{label}: images of different sizes "
                                f"{sorted({a.shape for a in images})[:3]}"])
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _read_torchvision(ds: CustomDataset, raw_dir: Path, source: str | None,
                      digests: Mapping[str, str] | None, download: bool) -> Splits:
    import urllib.error

    from jacreg.data import OFFLINE_HINT, DatasetSpec, _load_torchvision
    from jacreg.sources import DownloadError, parse_source

    cls = torchvision_class(ds)
    problems = source_problems(ds, source, digests)
    if problems:
        raise _fail(ds, f"torchvision.datasets.{ds.cls}", problems)
    where = parse_source(ds.name, source)
    plain = not ds.kwargs and ds.train_kwargs is None and ds.test_kwargs is None
    if torchvision_family(cls) is not None and plain:
        # the built-ins' path: archives verified, files installed from a URL or local directory
        spec = DatasetSpec(ds.name, 0, 0, 0, cls.__name__, 0, ())
        train, test = _load_torchvision(spec, raw_dir, download, where, digests)
    else:
        import torchvision.datasets as tvd

        root = Path(where.location) if where.kind == "local" else raw_dir / ds.name
        params = inspect.signature(cls.__init__).parameters
        fixed: dict[str, Any] = {"root": str(root)} if "root" in params else {}
        if "download" in params or issubclass(cls, tvd.MNIST):  # EMNIST: **kwargs to MNIST
            fixed["download"] = where.kind == "default" and download
        built = []
        for is_train in (True, False):
            kwargs = {**fixed, **ds.kwargs, **_split_kwargs(ds, cls, is_train)}
            call = f"torchvision.datasets.{ds.cls}(" + ", ".join(
                f"{k}={v!r}" for k, v in kwargs.items()) + ")"
            try:
                built.append(cls(**kwargs))
            except urllib.error.URLError as error:
                raise DownloadError(f"{call}: download failed ({error})\nNo network? "
                                    + OFFLINE_HINT.format(name=ds.name)) from error
            except (RuntimeError, OSError, ValueError, TypeError) as error:
                raise _fail(ds, call, [f"{call} failed: {error}"]) from error
        train, test = built
    class_names = ds.class_names
    classes = getattr(train, "classes", None)
    if class_names is None and isinstance(classes, list | tuple) and classes:
        class_names = tuple(str(c) for c in classes)
    label = f"torchvision.datasets.{ds.cls}"
    x_train, y_train = _dataset_arrays(ds, train, f"{label} training data")
    x_test, y_test = _dataset_arrays(ds, test, f"{label} test data")
    return Splits({"train": (x_train, y_train), "test": (x_test, y_test)}, class_names,
                  {"train": (f"{label} training images", f"{label} training labels"),
                   "test": (f"{label} test images", f"{label} test labels")})


# --------------------------------------------------------------------------- preparation


def holdout_rows(n_train: int, n_hold: int, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """The training rows held out as the attack split: ``n_hold`` of them, drawn at random
    with a fixed seed, in their original order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_train)[:n_hold])


def read_splits(ds: CustomDataset, raw_dir: str | Path = "data/raw", source: str | None = None,
                digests: Mapping[str, str] | None = None, download: bool = True) -> Splits:
    """Read the source of ``ds`` (no checks beyond readability; see :func:`build_splits`)."""
    if ds.format == "npz":
        return _read_npz(ds)
    if ds.format == "folder":
        return _read_folder(ds)
    return _read_torchvision(ds, Path(raw_dir), source, digests, download)


def build_splits(ds: CustomDataset, splits: Splits
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Check the arrays and form the train/attack/test splits; returns (arrays, recorded spec).

    Raises :class:`DataError` listing every problem."""
    arrays, names, problems = check_splits(splits.arrays, splits.labels, splits.class_names,
                                           ds.layout or splits.layout)
    where = ds.describe()
    if problems:
        raise _fail(ds, where, problems)
    x_train, y_train = arrays["train"]
    if "attack" in arrays:
        x_attack, y_attack = arrays["attack"]
        attack = "given"
        n_hold = 0
    else:
        n_hold = (ds.attack_holdout if ds.attack_holdout is not None
                  else min(DEFAULT_ATTACK_HOLDOUT, len(x_train) // 5))
        if n_hold >= len(x_train):
            raise _fail(ds, where, [f"attack_holdout {n_hold} leaves no training images "
                                    f"(of {len(x_train)})"])
        if n_hold == 0:
            x_attack, y_attack, attack = x_train.copy(), y_train.copy(), "training images"
        else:
            rows = holdout_rows(len(x_train), n_hold)
            keep = np.ones(len(x_train), dtype=bool)
            keep[rows] = False
            x_attack, y_attack = x_train[rows], y_train[rows]
            x_train, y_train = x_train[keep], y_train[keep]
            attack = f"{n_hold} training images held out"
            for split, y in (("attack", y_attack), ("train", y_train)):
                missing = sorted(set(range(len(names))) - set(np.unique(y).tolist()))
                if missing:
                    problems.append(
                        f"after holding out {n_hold} training images for the attack split, "
                        f"class(es) {_listed([_class(c, names) for c in missing])} have no "
                        f"image in the {split} split; change '{ds.key}.attack_holdout' or give "
                        "an attack split")
    if problems:
        raise _fail(ds, where, problems)
    out = {"x_train": x_train, "y_train": y_train, "x_attack": x_attack, "y_attack": y_attack,
           "x_test": arrays["test"][0], "y_test": arrays["test"][1]}
    _, channels, height, width = x_train.shape
    spec = {"format": ds.format, "origin": where, "channels": int(channels),
            "height": int(height), "width": int(width), "num_classes": len(names),
            "classes": list(names), "attack_holdout": int(n_hold), "attack_split": attack,
            "dtype": str(x_train.dtype)}
    return out, spec


def prepare_custom(name: str, entry: Mapping[str, Any], out: str | Path,
                   raw_dir: str | Path = "data/raw", source: str | None = None,
                   digests: Mapping[str, str] | None = None, download: bool = True) -> dict:
    """Read, check and write the prepared file of ``data.custom.<name>`` (atomically); returns
    its tensors. Raises :class:`DataError` (or a download/checksum error) naming the problem;
    ``out`` is then left untouched."""
    import torch

    from jacreg.data import write_prepared

    ds = CustomDataset.from_config(name, entry)
    arrays, spec = build_splits(ds, read_splits(ds, raw_dir, source, digests, download))
    tensors = {key: torch.from_numpy(np.ascontiguousarray(value))
               for key, value in arrays.items()}
    write_prepared(name, tensors, out, spec)
    return tensors


def check_source(name: str, entry: Mapping[str, Any], source: str | None = None,
                 digests: Mapping[str, str] | None = None) -> int | None:
    """Everything that can be checked without downloading or decoding: an npz completely, a
    folder's layout and image headers, a torchvision class's existence and sources. Raises
    :class:`DataError`. The workflow calls it while reading the configuration.

    Returns the number of classes K when the source tells it without downloading (an npz, a
    folder, ``class_names`` in the entry), else None."""
    ds = CustomDataset.from_config(name, entry)
    if ds.format == "npz":
        return int(build_splits(ds, _read_npz(ds))[1]["num_classes"])
    if ds.format == "folder":
        return len(scan_folder(ds).classes)
    problems = source_problems(ds, source, digests)
    if problems:
        raise _fail(ds, f"torchvision.datasets.{ds.cls}", problems)
    return len(ds.class_names) if ds.class_names else None


def needs_preparing(entry: Mapping[str, Any], prepared: str | Path) -> bool:
    """True when the prepared file is missing or older than an npz source (then the workflow
    prepares it, and checks the source first)."""
    prepared = Path(prepared)
    if not prepared.exists():
        return True
    path = entry.get("path")
    if entry.get("format") == "npz" and path and Path(path).exists():
        return Path(path).stat().st_mtime > prepared.stat().st_mtime
    return False
