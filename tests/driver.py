"""train.py's command line with one of the patches below applied first, for tests that
watch a run from inside or provoke a fault in it:

    python tests/driver.py PATCH[=VALUE] with <train.py's settings...>

``rank`` in a patch is the process's MPI rank.
"""
import errno
import fcntl
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from models.trainer import Trainer  # noqa: E402

rank = train.processes.rank


def resident_bytes():
    with open("/proc/self/status") as f:
        pages = [line for line in f if line.startswith("VmRSS:")][0]
    return int(pages.split()[1]) * 1024


def record_epochs(_):
    """After each report: the epoch, the process's resident memory and the run folder's
    files with their sizes, a JSON line each in ``epochs.jsonl`` beside the run folder."""
    report = train.report

    def recorded(cfg, folder, state, *args):
        report(cfg, folder, state, *args)
        files = {e.name: e.stat().st_size for e in os.scandir(folder)}
        with open(os.path.join(folder, os.pardir, "epochs.jsonl"), "a") as f:
            f.write(json.dumps([state.epoch, resident_bytes(), files]) + "\n")
    train.report = recorded


def record_checkpoints(folder):
    """Each rank writes the epoch and image of its latest checkpoint to
    ``folder/rank<r>.json``."""
    save_run = train.save_run

    def recorded(run_folder, cfg, state, *args):
        save_run(run_folder, cfg, state, *args)
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
            json.dump([state.epoch, state.images_done], f)
    train.save_run = recorded


def drift_at_update(step):
    """Rank 1 alone drifts from rank 0 in its ``step``-th update."""
    apply_gradient, calls = Trainer.apply_gradient, []

    def drifting(self, vector):
        applied = apply_gradient(self, vector)
        calls.append(1)
        if len(calls) == int(step):
            self.state.params.buffer[0] += 1e-3
        return applied
    if rank == 1:
        Trainer.apply_gradient = drifting


def poison_gradient(step):
    """Rank 1 alone gets a NaN in its ``step``-th gradient."""
    gradient, calls = Trainer.gradient, []

    def poisoned(self, x, eps, into=None):
        cost, vector = gradient(self, x, eps, into)
        calls.append(1)
        if len(calls) == int(step):
            vector.gradient[0] = float("nan")
        return cost, vector
    if rank == 1:
        Trainer.gradient = poisoned


def no_locks(_):
    """A filesystem without working locks: every lock fails as on such a mount."""
    def flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    fcntl.flock = flock


PATCHES = {f.__name__: f for f in (record_epochs, record_checkpoints, drift_at_update,
                                   poison_gradient, no_locks)}

if __name__ == "__main__":
    name, _, value = sys.argv[1].partition("=")
    PATCHES[name](value)
    train.main([train.__file__] + sys.argv[2:])
