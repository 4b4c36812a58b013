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


class _Python2Pickler(pickle._Pickler):
    """Pure-Python pickler that stores bytes as Python 2 `str` opcodes, like the official files.

    The stock protocol-2 pickler stores bytes through `_codecs.encode`, a global
    the official files (and hence the restricted loader) never use.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        """Write `obj` with SHORT_BINSTRING / BINSTRING, as Python 2 did for `str`."""
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


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


def write_cifar10_batch(path, data, labels, batch_label=b"fake CIFAR-10 batch"):
    """Write one batch file in the official format (Python-2-style protocol-2 pickle).

    `data` is a uint8 array of shape (n, 3072) (1024 red, then green, then blue
    values per image, each plane row-major) and `labels` n integers in 0..9.
    """
    data = np.asarray(data)
    labels = [int(label) for label in labels]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_SIZE:
        raise ValueError(
            f"data must be a uint8 array of shape (n, {IMAGE_SIZE}), got {data.dtype} {data.shape}"
        )
    if len(labels) != len(data):
        raise ValueError(f"got {len(labels)} labels for {len(data)} images")
    batch = {
        b"batch_label": batch_label,
        b"labels": labels,
        b"data": data,
        b"filenames": [b"fake_%05d.png" % i for i in range(len(data))],
    }
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(batch)


def write_fake_cifar10(folder, n_per_batch, seed):
    """Write all six batch files of random images into `folder` (created if needed).

    Returns `(train_x, test_x)`: the written images as uint8 (N, 3, 32, 32) arrays,
    i.e. exactly what `load_cifar10` must return for this folder.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    written = []
    for i, name in enumerate(ALL_FILES):
        data = rng.randint(0, 256, size=(n_per_batch, IMAGE_SIZE)).astype(np.uint8)
        labels = rng.randint(0, 10, size=n_per_batch)
        label = b"testing batch 1 of 1" if name == TEST_FILE else b"training batch %d of 5" % (i + 1)
        write_cifar10_batch(os.path.join(folder, name), data, labels, batch_label=label)
        written.append(data.reshape(-1, 3, 32, 32))
    return np.concatenate(written[:-1]), written[-1]
