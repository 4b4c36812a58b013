"""CIFAR-10 in the official python-pickle format, loaded with a restricted unpickler.

The folder named by $CIFAR10_PATH (or its `cifar-10-batches-py/` subfolder) must
hold `data_batch_1` .. `data_batch_5` and `test_batch`. Each is a protocol-2
pickle written by Python 2 of a dict with keys b'batch_label', b'labels',
b'data' (uint8 array of shape (n, 3072)) and b'filenames'.
"""
import os
import pickle

import numpy as np
from numpy.core.multiarray import _reconstruct

from data.errors import DataError

ENV_VAR = "CIFAR10_PATH"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SUBFOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
ALL_FILES = TRAIN_FILES + (TEST_FILE,)
IMAGE_SIZE = 3 * 32 * 32

DOWNLOAD_HINT = (
    f"download the CIFAR-10 python version from {URL}, unpack it, "
    f"and export {ENV_VAR}=/path/to/{SUBFOLDER}"
)
REDOWNLOAD_HINT = f"re-download the CIFAR-10 python version from {URL}"

# The only globals an official batch file references (numpy array reconstruction).
# numpy >= 2 writes the module as numpy._core.multiarray; both name the same function.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ALLOWED_GLOBALS, never importing anything."""

    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to load {self._path}: it references {module}.{name}, "
                f"which CIFAR-10 files never contain; {REDOWNLOAD_HINT}."
            ) from None


def cifar10_folder():
    """Return the folder holding the six CIFAR-10 batch files, as named by $CIFAR10_PATH."""
    raw = os.environ.get(ENV_VAR, "")
    if not raw:
        raise DataError(f"{ENV_VAR} is not set; {DOWNLOAD_HINT}.")
    folder = os.path.abspath(os.path.expanduser(raw))
    if not os.path.isdir(folder):
        raise DataError(f"{ENV_VAR}={raw} is not an existing folder; {DOWNLOAD_HINT}.")
    candidates = [folder, os.path.join(folder, SUBFOLDER)]
    missing = [[f for f in ALL_FILES if not os.path.isfile(os.path.join(c, f))] for c in candidates]
    best = min(range(len(candidates)), key=lambda i: len(missing[i]))
    if missing[best]:
        raise DataError(
            f"CIFAR-10 files {', '.join(missing[best])} are missing from {candidates[best]} "
            f"({ENV_VAR}={raw}); {DOWNLOAD_HINT}."
        )
    return candidates[best]


def read_cifar10_batch(path):
    """Return the images of one batch file as a uint8 array of shape (n, 3072)."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as err:
        raise DataError(
            f"cannot read {path} ({err.strerror}); check its permissions or {DOWNLOAD_HINT}."
        ) from err
    except Exception as err:  # any failure to unpickle untrusted bytes means a bad file
        raise DataError(
            f"{path} is truncated or corrupt ({type(err).__name__}: {err}); {REDOWNLOAD_HINT}."
        ) from err
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
    if not (
        type(data) is np.ndarray
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[0] >= 1
        and data.shape[1] == IMAGE_SIZE
    ):
        found = (
            f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
            else f"{type(batch).__name__} with data of type {type(data).__name__}"
        )
        raise DataError(
            f"{path} is not a CIFAR-10 batch (expected a dict whose b'data' entry is a "
            f"uint8 array of shape (n, {IMAGE_SIZE}), found a {found}); {REDOWNLOAD_HINT}."
        )
    return data


def load_cifar10():
    """Return `(train_x, test_x)` as uint8 arrays of shape (N, 3, 32, 32), unshuffled.

    The training set is the concatenation of data_batch_1 .. data_batch_5 in order.
    """
    folder = cifar10_folder()
    train = np.concatenate([read_cifar10_batch(os.path.join(folder, f)) for f in TRAIN_FILES])
    test = read_cifar10_batch(os.path.join(folder, TEST_FILE))
    return train.reshape(-1, 3, 32, 32), test.reshape(-1, 3, 32, 32)
