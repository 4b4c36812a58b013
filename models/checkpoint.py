"""Training-state checkpoints: everything needed to continue a run bit for bit.

One ``.npz`` file (no pickles: ``allow_pickle=False``) holding the parameters, their Polyak
averages, the AdaMax moments, the training noise stream, the caller's arrays, and the
caller's JSON-able metadata under ``__meta__``. Writing is atomic, and the previous
checkpoint is kept as ``checkpoint.prev.npz`` so that a damaged newest one falls back to it.
"""
import io
import json
import os
import zipfile

import numpy as np

from .weights import atomic_write

NAME, PREVIOUS = "checkpoint.npz", "checkpoint.prev.npz"


class CheckpointError(Exception):
    """No usable checkpoint; the message says which files were tried and why."""


def model_arrays(model):
    """The model's full training state as a flat name -> array dict."""
    arrays = {}
    for prefix, source in (("param", model.get_weights(False)), ("avg", model.get_weights(True)),
                           *model.optimiser.state().items()):
        arrays.update({f"{prefix}/{name}": value for name, value in source.items()})
    for k, value in enumerate(model.random_state()):
        arrays[f"noise/{k}"] = value
    return arrays


def restore_model(model, arrays):
    def part(prefix):
        return {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
    model.set_weights(part("param"), which=("params",))
    model.set_weights(part("avg"), which=("avg_params",))
    model.optimiser.set_state({"m": part("m"), "u": part("u")})
    noise = part("noise")
    model.set_random_state([noise[str(k)] for k in range(len(noise))])


def save_checkpoint(folder, arrays, meta):
    """Write ``folder/checkpoint.npz`` atomically; the one it replaces becomes the previous."""
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.array(json.dumps(meta)), **arrays)
    path = os.path.join(folder, NAME)
    if os.path.exists(path):
        os.replace(path, os.path.join(folder, PREVIOUS))
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _read(path):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    return arrays, meta


def load_checkpoint(folder, log=print):
    """``(arrays, meta)`` of the newest readable checkpoint in ``folder``."""
    problems = []
    for name in (NAME, PREVIOUS):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            problems.append(f"{name} does not exist")
            continue
        try:
            result = _read(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            problems.append(f"{name} is truncated or corrupt ({err})")
            log(f"warning: {path} is truncated or corrupt; trying the previous checkpoint")
            continue
        if problems:
            log(f"warning: resuming from the previous checkpoint {path}")
        return result
    raise CheckpointError(f"no usable checkpoint in {folder}: {'; '.join(problems)}")
