"""The original's weight files, ``*.ndict.tar.gz`` (docs/model.md §12).

A gzip tar holding ``arrays.npz`` (``arr_0, arr_1, ...``) and ``names.txt`` (one name per
line, same order; names sorted). Writing is atomic: a temporary file in the same folder is
fsynced and renamed over the target, so a crash never leaves a half-written file.
Reading never unpickles (``allow_pickle=False``) and never extracts to disk.
"""
import gzip
import io
import re
import tarfile
import zipfile
import zlib

import numpy as np
from data.files import atomic_write


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
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
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


def _architecture(shapes):
    """What parameter names and shapes say about the options of the model that has them."""
    names = list(shapes)
    levels = {}
    for name in names:
        match = re.match(r"(\d+)_(\d+)_", name)
        if match:
            i, j = int(match[1]), int(match[2])
            levels[i] = max(levels.get(i, 0), j + 1)
    found = {"depths": [levels[i] for i in sorted(levels)]}
    if "x_enc_w" in shapes:
        found["n_h"] = shapes["x_enc_w"][0]
        down_conv2 = shapes.get("0_0_down_conv2_1_w")
        if down_conv2:  # its inputs: n_h2 + n_z and the pad channel; n_h2 = n_h usually
            found["n_z"] = down_conv2[1] - 1 - found["n_h"]
    flows = [("_deepiaf_", "a masked ResNet (_deep)"), ("_posterior_conv2_", "two networks (_nl2)"),
             ("_posterior_conv1_out_", "a network (_nl)"), ("_posterior_conv1_w", "one masked conv")]
    found["posterior flow"] = next((what for key, what in flows
                                    if any(key in n for n in names)), "none (diag or tim)")
    found["prior"] = "made" if any("_prior_conv1_" in n for n in names) else "diag or diag2"
    return found


def mismatch_message(values, model_shapes, source=None):
    """One sentence on why weights ``values`` do not fit a model with ``model_shapes``:
    the model options they seem to have been trained with, or the first tensors that differ."""
    where = source or "the weights"
    theirs = _architecture({k: np.shape(v) for k, v in values.items()})
    ours = _architecture(model_shapes)
    differences = [f"{key} {theirs.get(key)} (this model: {ours.get(key)})"
                   for key in ours if theirs.get(key) != ours.get(key)]
    if differences:
        return (f"{where} belong to another model: {'; '.join(differences)}; give the options "
                f"of the run that wrote them (n_h, n_z, depths, margs.posterior, ...)")
    missing = [k for k in model_shapes if k not in values]
    wrong = [f"{k} {np.shape(values[k])} (this model: {model_shapes[k]})"
             for k in model_shapes if k in values and np.shape(values[k]) != model_shapes[k]]
    if wrong:
        return f"{where} have other shapes than this model for {'; '.join(wrong[:3])}"
    return (f"{where} lack {len(missing)} parameter(s) of this model, e.g. {missing[0]} "
            f"(load_model_complete=False keeps their initial values)")
