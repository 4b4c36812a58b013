"""One writer per run folder: a second process that would write into a run in use is
refused and changes nothing; readers of the run (evaluate) work while it trains."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models.run.checkpoint import load_checkpoint
from models.run.folder import hold
from models.run.weights import load_ndict, save_ndict
from runs import TRAIN_PY, patched_train, wait_for_checkpoints
from test_parallel import MPIEXEC, mpiexec
from test_resume import TINY, assert_same_run, command, run, uninterrupted

ROOT = Path(__file__).resolve().parents[1]
RESUMED = ["n_epochs=10"]  # two more epochs than the finished TINY run
# TINY's model and data, checkpointing at the end of each epoch only.
EPOCHS = [a for a in TINY if a.split("=")[0] not in ("n_epochs", "checkpoint_minutes")]
# Another process that holds a folder the way a run does, until its stdin closes.
HOLDER = ("import sys; from models.run.folder import hold; hold(sys.argv[1]); "
          "print('held', flush=True); sys.stdin.read()")


def files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def refused(proc, folder, pid):
    return proc.returncode != 0 and "Traceback" not in proc.stderr and \
        f"the run folder {folder} is being written by another process (pid {pid} on " \
        in proc.stderr


def copy_of(folder, logs):
    copy = logs / "run"
    shutil.copytree(folder, copy)
    return copy


def test_a_second_resume_is_refused_while_the_first_runs_and_changes_nothing(
        tmp_path, tmp_path_factory):
    reference = uninterrupted(TINY, tmp_path_factory)
    alone = copy_of(reference, tmp_path / "alone")
    run([f"resume={alone}"] + RESUMED, tmp_path / "alone")
    # The same resume twice: the first, paused once it writes, must be all the second meets.
    busy = copy_of(reference, tmp_path / "busy")
    first = subprocess.Popen(command([f"resume={busy}"] + RESUMED), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    wait_for_checkpoints(first, tmp_path / "busy", 2)
    first.send_signal(signal.SIGSTOP)
    before = files(busy)
    second = subprocess.run(command([f"resume={busy}"] + RESUMED), capture_output=True,
                            text=True, timeout=300)
    assert refused(second, busy, first.pid), second.stderr[-3000:]
    assert files(busy) == before
    first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:] + err[-3000:]
    assert_same_run(busy, alone)
    for got, expected in zip(load_checkpoint(busy)[0].values(),
                             load_checkpoint(alone)[0].values()):
        np.testing.assert_array_equal(got, expected)
    assert (busy / "log.txt").read_text().count("Resuming") == 1


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: pip install -e '.[mpi]'")
def test_under_mpi_every_rank_of_a_second_writer_exits(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = files(folder)
        proc = subprocess.run(mpiexec(2, [TRAIN_PY, "with", f"resume={folder}"]),
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert refused(proc, folder, holder.pid), proc.stderr[-3000:]
        assert files(folder) == before
    finally:
        holder.communicate("")


def test_a_folder_that_cannot_be_locked_is_named_and_the_run_goes_on(tmp_path):
    proc = subprocess.run([sys.executable] + patched_train("no_locks", ["with"] + EPOCHS +
                                                           ["n_epochs=1"]),
                          env={**os.environ, "ML_LOG_PATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = next(tmp_path.iterdir())
    warning = f"warning: {folder} cannot be locked (No locks available)"
    assert warning in proc.stdout and warning in (folder / "log.txt").read_text()
    assert (folder / "weights.ndict.tar.gz").exists()


def test_a_process_may_hold_its_own_folder_again(tmp_path):
    assert hold(tmp_path) is None and hold(tmp_path) is None  # e.g. ex.run, then a resume
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out, err = holder.communicate("")
    assert holder.returncode != 0 and f"(pid {os.getpid()} on " in err


def test_evaluate_reads_a_run_while_it_trains(tmp_path):
    training = subprocess.Popen(command(EPOCHS + ["n_epochs=0"]),
                                env={**os.environ, "ML_LOG_PATH": str(tmp_path)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoints(training, tmp_path, 1)  # the end of epoch 0: weights written
        folder = next(tmp_path.iterdir())
        proc = subprocess.run([sys.executable, TRAIN_PY, "evaluate", "with",
                               f"load_model_path={folder}"], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert np.isfinite(json.loads(proc.stdout.splitlines()[-1])["cost"])
        assert training.poll() is None  # it was training all along
    finally:
        training.send_signal(signal.SIGINT)
        training.communicate(timeout=300)


def test_weights_read_while_they_are_rewritten_are_always_whole(tmp_path):
    path, stop, size = tmp_path / "weights.ndict.tar.gz", threading.Event(), 200_000

    def rewrite():
        version = 0
        while not stop.is_set():
            version += 1
            save_ndict({"a": np.full(size, version, np.float32), "b": np.full(3, version)},
                       path)
    save_ndict({"a": np.zeros(size, np.float32), "b": np.zeros(3)}, path)
    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        versions, deadline = set(), time.time() + 120
        while len(versions) <= 10 and time.time() < deadline:  # reads overlapping rewrites
            weights = load_ndict(path)  # raises on a partial file
            assert set(weights["a"]) == set(weights["b"])  # one version throughout
            versions |= set(weights["b"])
    finally:
        stop.set()
        writer.join()
    assert len(versions) > 10
