"""Runs that survive: interrupt (SIGINT, SIGKILL), resume, and match an uninterrupted run
bit for bit; damaged checkpoints fall back; contradicting configs are refused."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from PIL import Image

from models.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.run.weights import load_ndict
from runs import wait_for_checkpoints
from test_bf16 import HAS_BF16

ROOT = Path(__file__).resolve().parents[1]
# Long enough (96 steps) that a run is still going when the test interrupts it.
TINY = ["problem=toy", "n_train=96", "n_batch=8", "n_epochs=8", "n_h=8", "n_z=4",
        "depths=[1,1]", "seed=11", "checkpoint_minutes=0"]


def command(args):
    return [sys.executable, str(ROOT / "train.py"), "with"] + args


def run(args, logs):
    proc = subprocess.run(command(args), env={**os.environ, "ML_LOG_PATH": str(logs)},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def start_and_signal(args, logs, sig, after_steps):
    """Start a run, wait until it has checkpointed ``after_steps`` times, send ``sig``."""
    proc = subprocess.Popen(command(args), env={**os.environ, "ML_LOG_PATH": str(logs)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoints(proc, logs, after_steps)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err, next(logs.iterdir())


_references = {}


def uninterrupted(settings, tmp_path_factory):
    """The folder of the run with ``settings``, made once per module."""
    if tuple(settings) not in _references:
        logs = tmp_path_factory.mktemp("reference")
        run(settings, logs)
        _references[tuple(settings)] = next(logs.iterdir())
    return _references[tuple(settings)]


@pytest.fixture
def reference(tmp_path_factory):
    return uninterrupted(TINY, tmp_path_factory)


def assert_same_run(folder, reference):
    assert (folder / "results.txt").read_text() == (reference / "results.txt").read_text()
    for name in ("weights.ndict.tar.gz", "weights_best.ndict.tar.gz"):
        got, expected = load_ndict(folder / name), load_ndict(reference / name)
        assert list(got) == list(expected)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    _, got_meta = load_checkpoint(folder)
    _, expected_meta = load_checkpoint(reference)
    assert got_meta["loop"] == expected_meta["loop"]  # history, best, counters


@pytest.mark.parametrize("precision", ["fp32"] + ["bf16"] * HAS_BF16)
def test_sigint_then_sigkill_then_resume_matches_an_uninterrupted_run(precision, tmp_path,
                                                                      tmp_path_factory):
    settings = TINY + ["conv_precision=bf16"] * (precision == "bf16")
    reference = uninterrupted(settings, tmp_path_factory)
    code, out, _, folder = start_and_signal(settings, tmp_path, signal.SIGINT, after_steps=4)
    assert code == 0 and f"resume={folder}" in out
    # As if killed after reporting the epoch under way but before its checkpoint: the
    # resumed run reports that epoch again, and results.txt must not hold it twice.
    results = folder / "results.txt"
    header = (reference / "results.txt").read_text().splitlines(keepends=True)[0]
    reported = results.read_text() if results.exists() else header
    epoch = load_checkpoint(folder)[1]["loop"]["epoch"]
    results.write_text(reported + f"{epoch} 1.0 2.0\n")
    # Resume, and kill -9 it while it checkpoints after every step.
    code, _, _, _ = start_and_signal([f"resume={folder}"], tmp_path, signal.SIGKILL,
                                     after_steps=9)
    assert code == -signal.SIGKILL
    load_checkpoint(folder)  # the newest (or the previous) checkpoint is intact
    assert "pid" in (folder / "writer.lock").read_text()  # held by the killed run: now free
    proc = run([f"resume={folder}"], tmp_path)
    assert "Resuming" in proc.stdout
    assert_same_run(folder, reference)
    log = (folder / "log.txt").read_text()
    assert log.count("Resuming") == 2 and "Run folder" in log  # appended, same folder
    curve = np.asarray(Image.open(folder / "learning_curve.png"))
    assert curve.ndim == 3 and curve.std() > 0


def test_contradicting_config_is_refused_with_the_differences(reference):
    proc = subprocess.run(command([f"resume={reference}", "n_h=16", "margs.kl_min=0.5"]),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "n_h: 8 -> 16" in proc.stderr and "margs.kl_min: 0.25 -> 0.5" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_run_folder_saved_before_conv_precision_existed_resumes_in_fp32(reference, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(reference, folder)
    arrays, meta = load_checkpoint(folder)
    del meta["config"]["conv_precision"]
    save_checkpoint(folder, arrays, meta)
    config = json.loads((folder / "config.json").read_text())
    del config["conv_precision"]
    (folder / "config.json").write_text(json.dumps(config))
    proc = run([f"resume={folder}", "n_epochs=9", "conv_precision=fp32"], tmp_path)
    assert "Convolutions: oneDNN, fp32 inputs" in proc.stdout
    assert load_checkpoint(folder)[1]["loop"]["epoch"] == 9


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units")
def test_a_run_resumes_in_its_own_precision(reference):
    proc = subprocess.run(command([f"resume={reference}", "conv_precision=bf16"]),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "conv_precision: 'fp32' -> 'bf16'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_diverging_run_stops_before_the_bad_update_and_says_where(tmp_path):
    proc = subprocess.run(command(TINY + ["margs.alpha=1e30"]),
                          env={**os.environ, "ML_LOG_PATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert "non-finite cost or gradient at epoch" in proc.stderr
    arrays, meta = load_checkpoint(next(tmp_path.iterdir()))
    assert np.isfinite(arrays["params"]).all() and np.isfinite(arrays["avg_params"]).all()


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    save_checkpoint(tmp_path, {"w": np.arange(3.0)}, {"epoch": 1})
    save_checkpoint(tmp_path, {"w": np.arange(4.0)}, {"epoch": 2})
    newest = tmp_path / "checkpoint.npz"
    newest.write_bytes(newest.read_bytes()[:-50])
    warnings = []
    arrays, meta = load_checkpoint(tmp_path, log=warnings.append)
    assert meta["epoch"] == 1 and list(arrays["w"]) == [0, 1, 2]
    assert "truncated or corrupt" in warnings[0]
    (tmp_path / "checkpoint.prev.npz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="checkpoint.prev.npz is truncated or corrupt"):
        load_checkpoint(tmp_path, log=warnings.append)


def test_a_checkpoint_of_the_older_layout_is_refused_in_one_sentence(tmp_path):
    np.savez(tmp_path / "checkpoint.npz", __meta__=np.array('{"epoch": 3, "step": 1}'),
             **{"param/x_enc_w": np.zeros(3), "noise/0": np.zeros(18)})
    with pytest.raises(CheckpointError, match="written by another version of this code"):
        load_checkpoint(tmp_path, log=lambda _: None)
