"""The data set: scikit-learn's copy of the UCI handwritten digits by default, or any MNIST-like `.npz` file.

`load_digits` ships with scikit-learn (1797 greyscale 8x8 images, 10 classes), so nothing is downloaded at run
time. The split is fixed: a stratified 80/20 split with a fixed seed, so every run and every optimizer sees the same
training and test images. Pixels are scaled to [0, 1].

To run the study on full MNIST (or anything shaped like it) where a copy is available offline, pass
``--data path/to/mnist.npz``: an `.npz` with arrays ``x_train, y_train, x_test, y_test`` (images of any shape, they
are flattened; integer pixels are divided by their maximum, so uint8 MNIST lands in [0, 1]). Keras' `mnist.npz`
has exactly these names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # (n_train, features), float
    y_train: np.ndarray  # (n_train,), int64
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def astype(self, dtype) -> Dataset:
        return Dataset(self.name, self.x_train.astype(dtype), self.y_train, self.x_test.astype(dtype), self.y_test)


def _scale(x) -> np.ndarray:
    x = np.asarray(x)
    x = x.reshape(len(x), -1)
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float64) / max(int(x.max()), 1)
    return x.astype(np.float64)


class MissingExtra(ImportError):
    """What the study needs is not installed; the message names the extra that installs it."""


def load_digits() -> Dataset:
    """The UCI 8x8 digits shipped with scikit-learn, split 80/20 (stratified, seed SPLIT_SEED)."""
    try:
        from sklearn.datasets import load_digits as _load
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise MissingExtra(f"the convergence study needs scikit-learn for its digits data ({error}): "
                           "pip install 'fastopt[convergence]', or pass --data with an MNIST-like .npz") from error

    bunch = _load()
    x = bunch.data / 16.0  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return Dataset("UCI digits 8x8 (scikit-learn)", x_train, y_train, x_test, y_test)


def load_npz(path) -> Dataset:
    """An MNIST-like `.npz` with x_train, y_train, x_test, y_test (e.g. Keras' mnist.npz)."""
    with np.load(path) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: expected arrays x_train, y_train, x_test, y_test; missing {sorted(missing)}")
        return Dataset(str(path), _scale(f["x_train"]), f["y_train"].astype(np.int64).ravel(),
                       _scale(f["x_test"]), f["y_test"].astype(np.int64).ravel())


def load(path=None, dtype=np.float32) -> Dataset:
    """`load_npz(path)` when a path is given, else `load_digits()`; features cast to `dtype`."""
    data = load_npz(path) if path else load_digits()
    return data.astype(dtype)
