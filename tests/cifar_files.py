"""Test helper: write CIFAR-10 batch files in the official format (Python-2 protocol-2 pickles)."""
import os
import pickle

import numpy as np

from data.cifar10 import ALL_FILES, IMAGE_SIZE, TEST_FILE


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


def write_cifar10_batch(path, data, labels, batch_label=b"fake CIFAR-10 batch"):
    """Write one batch file in the official format.

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
