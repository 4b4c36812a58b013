"""The original's weight files, ``*.ndict.tar.gz`` (SPEC §7).

A gzip tar holding ``arrays.npz`` (``arr_0, arr_1, ...``) and ``names.txt`` (one name per
line, same order; names sorted). Writing is atomic: a temporary file in the same folder is
fsynced and renamed over the target, so a crash never leaves a half-written file.
Reading never unpickles (``allow_pickle=False``) and never extracts to disk.
"""
import io
import os
import tarfile
import tempfile

import numpy as np


class WeightsError(Exception):
    """A weights file that cannot be used; the message names the file and the problem."""


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temporary file, fsync it, then rename it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as open() would, not mkstemp's owner-only 0600
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            _add_member(tar, "arrays.npz", arrays.getvalue())
            _add_member(tar, "names.txt", names_txt)

    atomic_write(path, write)


def load_ndict(path):
    """Read a file written by `save_ndict` (or by the original code) into a name -> array dict."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name.lstrip("./"): m for m in tar.getmembers()}
            if not {"arrays.npz", "names.txt"} <= set(members):
                raise WeightsError(f"{path}: not a weights file (it needs arrays.npz and "
                                   f"names.txt, it holds {sorted(members)})")
            names = tar.extractfile(members["names.txt"]).read().decode().splitlines()
            arrays = np.load(io.BytesIO(tar.extractfile(members["arrays.npz"]).read()),
                             allow_pickle=False)
            if len(arrays.files) != len(names):
                raise WeightsError(f"{path}: names.txt lists {len(names)} names but "
                                   f"arrays.npz holds {len(arrays.files)} arrays")
            return {name: arrays[f"arr_{i}"] for i, name in enumerate(names)}
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such weights file") from None
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError) as err:
        raise WeightsError(f"{path}: truncated or corrupt weights file ({err})") from None
