"""Training-state checkpoints: everything needed to continue a run bit for bit.

One ``.npz`` file (no pickles: ``allow_pickle=False``) holding the caller's arrays (the
model's parameters, averages and optimiser moments) and its JSON-able metadata (the loop's
state, the config) under ``__meta__`` (docs/model.md §12). Writing is atomic, and the
previous checkpoint is kept as ``checkpoint.prev.npz`` so that a damaged newest one falls
back to it.
"""
import io
import json
import os
import zipfile

import numpy as np
from layers.runtime.files import atomic_write

NAME, PREVIOUS = "checkpoint.npz", "checkpoint.prev.npz"
FORMAT = 2  # 1: per-stream noise states and a hand-listed loop state (before Nov 2026)


class CheckpointError(Exception):
    """No usable checkpoint; the message says which files were tried and why."""


def save_checkpoint(folder, arrays, meta):
    """Write ``folder/checkpoint.npz`` atomically; the one it replaces becomes the previous.
    If writing fails (a full disk), both stay as they were."""
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.array(json.dumps(dict(meta, format=FORMAT))), **arrays)
    atomic_write(os.path.join(folder, NAME), lambda f: f.write(buffer.getvalue()),
                 previous=os.path.join(folder, PREVIOUS))


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
        found = result[1].get("format", 1)
        if found != FORMAT:
            raise CheckpointError(
                f"{path} was written by another version of this code (checkpoint format "
                f"{found}, this code reads {FORMAT}) and cannot be resumed; start a new run, "
                f"or from its weights with load_model_path={folder}")
        if problems:
            log(f"warning: resuming from the previous checkpoint {path}")
        return result
    raise CheckpointError(f"no usable checkpoint in {folder}: {'; '.join(problems)}")
