"""Days-long runs, compressed: many epochs of a tiny model that checkpoints after every
step keep their memory, files and logs bounded; a write that fails (a full disk) stops
the run with one sentence, its last checkpoint intact, and resume continues exactly."""
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.run.checkpoint import load_checkpoint
from models.run.weights import load_ndict
from runs import TRAIN_PY, patched_train

ROOT = Path(__file__).resolve().parents[1]
# 32 images in minibatches of 2: 16 steps (and 16 checkpoints) per epoch, a report per epoch.
SOAK_EPOCHS = 12
SOAK = ["problem=toy", "n_train=32", "n_batch=2", "n_h=8", "n_z=4", "depths=[1,1]",
        "n_reporting=1", "checkpoint_minutes=0", f"n_epochs={SOAK_EPOCHS}", "seed=3"]
# Every file a run folder holds, but the sample grids (two per report, as the original).
RUN_FILES = {"command.sh", "config.json", "log.txt", "results.txt", "learning_curve.png",
             "weights.ndict.tar.gz", "weights_best.ndict.tar.gz", "checkpoint.npz",
             "checkpoint.prev.npz", "writer.lock"}


def train_command(args, patch=None):
    return [sys.executable] + (patched_train(patch, args) if patch else [TRAIN_PY] + args)


def run(command, logs, check=True, preexec_fn=None):
    proc = subprocess.run(command, env={**os.environ, "ML_LOG_PATH": str(logs)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=900, preexec_fn=preexec_fn)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def folder_of(logs):
    (folder,) = [f for f in Path(logs).iterdir() if f.is_dir()]
    return folder


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    logs, observer = tmp_path_factory.mktemp("soak"), tmp_path_factory.mktemp("observer")
    run(train_command(["-F", str(observer), "with"] + SOAK, "record_epochs"), logs)
    epochs = [json.loads(line) for line in (logs / "epochs.jsonl").read_text().splitlines()]
    return folder_of(logs), epochs, observer / "1"


def test_memory_does_not_grow_over_many_epochs(soak):
    _, epochs, _ = soak
    assert [e[0] for e in epochs] == list(range(SOAK_EPOCHS))
    after_second, at_end = epochs[1][1], epochs[-1][1]
    assert at_end - after_second < 4 * 2**20, [e[1] for e in epochs]


def test_the_run_folder_holds_a_bounded_set_of_files(soak):
    folder, epochs, _ = soak
    samples = {f"sample{kind}_{e}.png" for e in range(SOAK_EPOCHS) for kind in ("", "_fixed1")}
    assert {p.name for p in folder.iterdir()} == RUN_FILES | samples  # no leftovers
    # Apart from the per-report lines and history, files keep their size: what a day
    # adds is proportional to its reports, not to its steps (16 checkpoints per epoch).
    second, last = epochs[1][2], epochs[-1][2]
    growth = {name: (last[name] - second[name]) / (SOAK_EPOCHS - 2) for name in second
              if name in RUN_FILES}
    assert growth["log.txt"] < 200 and growth["results.txt"] < 400, growth
    assert growth["checkpoint.npz"] < 2000, growth  # the loop's history, one entry per epoch
    assert abs(growth["weights.ndict.tar.gz"]) < 100, growth


def test_the_log_has_a_line_per_report_not_per_step(soak):
    folder, _, _ = soak
    lines = (folder / "log.txt").read_text().splitlines()
    reports = [line for line in lines if line.startswith(folder.name)]
    assert len(reports) == SOAK_EPOCHS
    assert len(lines) < SOAK_EPOCHS + 10  # 16 steps and checkpoints per epoch print nothing


def test_metrics_grow_with_epochs_not_steps(soak):
    _, _, observed = soak
    metrics = json.loads((observed / "metrics.json").read_text())
    for name, metric in metrics.items():
        per_epoch = 10 if name == "train.running_cost" else 1
        assert len(metric["values"]) == per_epoch * SOAK_EPOCHS, name
    running = metrics["train.running_cost"]
    assert running["steps"][9::10] == [16 * (e + 1) for e in range(SOAK_EPOCHS)]
    # The last value of each epoch is that epoch's training cost.
    np.testing.assert_allclose(running["values"][9::10], metrics["train.cost"]["values"],
                               rtol=1e-6)


# -- a full disk --------------------------------------------------------------------
TINY = ["problem=toy", "n_train=32", "n_batch=8", "n_h=8", "n_z=4", "depths=[1,1]",
        "checkpoint_minutes=0", "seed=4"]


def file_size_limit(limit):
    """For ``preexec_fn``: files the process writes may not grow beyond ``limit`` bytes
    (``ulimit -f``); a write past it fails with EFBIG, as on a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_failed_checkpoint_write_keeps_the_last_one_and_resume_continues_exactly(
        tmp_path):
    run(train_command(["with"] + TINY + ["n_epochs=2"]), tmp_path / "reference")
    logs = tmp_path / "logs"
    run(train_command(["with"] + TINY + ["n_epochs=1"]), logs)
    folder = folder_of(logs)
    checkpoint = (folder / "checkpoint.npz").read_bytes()
    # The next run may write files of half a checkpoint's size: its first checkpoint fails.
    resume = ["with", f"resume={folder}", "n_epochs=2"]
    proc = run(train_command(resume), logs, check=False,
               preexec_fn=file_size_limit(len(checkpoint) // 2))
    assert proc.returncode != 0
    assert f"could not write {folder / 'checkpoint.npz'} (File too large)" in proc.stderr
    assert f"resume={folder}" in proc.stderr and "Traceback" not in proc.stderr
    assert (folder / "checkpoint.npz").read_bytes() == checkpoint  # intact, and no leftovers
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    run(train_command(resume), logs)
    expected = folder_of(tmp_path / "reference")
    assert (folder / "results.txt").read_text() == (expected / "results.txt").read_text()
    got, want = (load_ndict(f / "weights.ndict.tar.gz") for f in (folder, expected))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert load_checkpoint(folder)[1]["loop"] == load_checkpoint(expected)[1]["loop"]
