"""Helpers for tests that run train.py in other processes and watch or patch them."""
import textwrap
import time
from pathlib import Path

TRAIN_PY = str(Path(__file__).resolve().parents[1] / "train.py")


def train_program(argv, setup=""):
    """A program for ``python -c``: it imports train.py as the module ``train`` (``rank``
    is the process's MPI rank), runs ``setup`` (code that may patch ``train``), then
    train.py's command line ``argv`` (without the script's name)."""
    return textwrap.dedent(f"""
        import json, os, sys
        import numpy as np
        sys.path.insert(0, {str(Path(TRAIN_PY).parent)!r})
        import train
        rank = train.processes.rank
    """) + textwrap.dedent(setup) + f"\ntrain.main({[TRAIN_PY] + list(argv)!r})\n"


def wait_for_checkpoints(proc, logs, count):
    """Wait until the run ``proc``, logging under ``logs``, has written ``count``
    checkpoints (seen as distinct modification times of ``checkpoint.npz``)."""
    seen, deadline = set(), time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(seen) < count:
        for path in logs.glob("*/checkpoint.npz"):
            try:
                seen.add(path.stat().st_mtime_ns)
            except FileNotFoundError:  # just renamed to checkpoint.prev.npz
                pass
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be interrupted"
