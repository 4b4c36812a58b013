"""The original's weight files, ``*.ndict.tar.gz`` (docs/model.md §12).

A gzip tar holding ``arrays.npz`` (``arr_0, arr_1, ...``) and ``names.txt`` (one name per
line, same order; names sorted); equal weights make equal files, byte for byte. Writing is atomic: a temporary file in the same folder is
fsynced and renamed over the target, so a crash never leaves a half-written file.
Reading never unpickles (``allow_pickle=False``) and never extracts to disk.
"""
import gzip
import io
import tarfile
import zipfile
import zlib

import numpy as np
from layers.runtime.files import atomic_write


WEIGHTS_MEMBERS = {"arrays.npz", "names.txt"}


class WeightsError(Exception):
    """A weights file that cannot be used; the message names the file and the problem."""


def _add_member(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def save_ndict(values, path):
    """Write a name -> array dict to ``path`` in the original's format."""
    names = sorted(values)
    arrays = io.BytesIO()
    np.savez(arrays, *[np.asarray(values[n]) for n in names])
    names_txt = "".join(n + "\n" for n in names).encode()

    def write(f):
        # No time and no name in the gzip header: the same weights give the same bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as packed, \
                tarfile.open(fileobj=packed, mode="w") as tar:
            _add_member(tar, "arrays.npz", arrays.getvalue())
            _add_member(tar, "names.txt", names_txt)

    atomic_write(path, write)


def load_ndict(path):
    """Read a file written by `save_ndict` (or by the original code) into a name -> array dict."""
    try:
        # Decompressed whole, at once: a tar member read from the gzip stream itself seeks
        # back by decompressing again from the start, and gzip checks the file's length.
        with open(path, "rb") as f:
            archive = io.BytesIO(gzip.decompress(f.read()))
        with tarfile.open(fileobj=archive) as tar:
            held = {m.name.lstrip("./"): m for m in tar.getmembers()}
            members = {name: tar.extractfile(m).read() for name, m in held.items()
                       if m.isfile() and name in WEIGHTS_MEMBERS}
        if set(members) != WEIGHTS_MEMBERS:
            raise WeightsError(f"{path}: not a weights file (it needs "
                               f"{' and '.join(sorted(WEIGHTS_MEMBERS))}, it holds {sorted(held)})")
        names = members["names.txt"].decode().splitlines()
        arrays = np.load(io.BytesIO(members["arrays.npz"]), allow_pickle=False)
        if len(arrays.files) != len(names):
            raise WeightsError(f"{path}: names.txt lists {len(names)} names but "
                               f"arrays.npz holds {len(arrays.files)} arrays")
        return {name: arrays[f"arr_{i}"] for i, name in enumerate(names)}
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
            KeyError) as err:
        raise WeightsError(f"{path}: truncated or corrupt weights file ({err})") from None
