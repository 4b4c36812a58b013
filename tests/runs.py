"""Helpers for tests that run train.py in other processes and watch or patch them."""
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TRAIN_PY = str(TESTS.parent / "train.py")


def patched_train(patch, argv):
    """Arguments for Python: train.py's command line ``argv`` (without the script's name),
    run by tests/driver.py after its patch ``patch`` (``name`` or ``name=value``)."""
    return [str(TESTS / "driver.py"), patch] + list(argv)


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
