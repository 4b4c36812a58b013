"""One run over two MPI ranks (mpiexec from pytest, tiny model): the same numbers as one
process with the doubled minibatch, evaluation as one process, and faults that end or
stop every rank together and resume exactly."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifar_files import write_fake_cifar10
from models.run.checkpoint import load_checkpoint
from models.run.weights import load_ndict
from runs import patched_train, wait_for_checkpoints

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec: pip install -e '.[mpi]'")
# kl_min=0: without free bits, the gradient of 8 images is the sum of two of 4.
TINY = ["problem=toy", "n_train=96", "n_h=8", "n_z=4", "depths=[1,1]", "margs.kl_min=0",
        "n_epochs=2", "checkpoint_minutes=0"]
SEED = "seed=5"  # runs compared with each other need one; without, rank 0's is used
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def mpiexec(n, argv):
    """MPICH's mpiexec (the [mpi] extra) starting ``n`` ranks of Python with ``argv``."""
    return [MPIEXEC, "-n", str(n), sys.executable] + argv


def run(command, logs, check=True, timeout=900):
    proc = subprocess.run(command, env={**ENV, "ML_LOG_PATH": str(logs)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train(args):
    return [str(ROOT / "train.py"), "with"] + TINY + args + [SEED]


def only_folder(logs):
    folders = [f for f in logs.iterdir() if f.is_dir()]
    assert len(folders) == 1, folders  # rank 0 alone made a run folder
    return folders[0]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    logs = tmp_path_factory.mktemp("two_ranks")
    run(mpiexec(2, train(["n_batch=4"])), logs)
    return only_folder(logs)


@pytest.fixture(scope="module")
def two_ranks_from_start(tmp_path_factory, two_ranks):
    """Data-dependent init looks at the first n_batch images, a rank's minibatch: runs with
    another n_batch start from the same weights by loading them (another run's here)."""
    logs = tmp_path_factory.mktemp("two_ranks_from_start")
    run(mpiexec(2, train(["n_batch=4", f"load_model_path={two_ranks}"])), logs)
    return only_folder(logs)


@pytest.fixture(scope="module")
def one_process_from_start(tmp_path_factory, two_ranks):
    logs = tmp_path_factory.mktemp("one_process_from_start")
    run([sys.executable] + train(["n_batch=8", f"load_model_path={two_ranks}"]), logs)
    return only_folder(logs)


def test_two_ranks_of_4_images_train_as_one_process_of_8(two_ranks_from_start,
                                                         one_process_from_start):
    folders = (two_ranks_from_start, one_process_from_start)
    (ranks, meta), (single, single_meta) = (load_checkpoint(f) for f in folders)
    assert set(ranks) == set(single)
    for name, value in single.items():  # 12 steps, each float32 rounding apart
        np.testing.assert_allclose(ranks[name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    assert np.abs(single["params"] - single["avg_params"]).max() > 1e-3  # steps were taken
    history = [m["loop"]["history"]["train"] for m in (meta, single_meta)]
    np.testing.assert_allclose(np.array(history[0]), np.array(history[1]), rtol=1e-5)
    assert "2 processes, global minibatch 8" in (two_ranks_from_start / "log.txt").read_text()


def test_evaluation_gives_one_set_of_numbers_for_any_minibatch_and_number_of_ranks(
        two_ranks, tmp_path):
    # The run's data options (its seed too) are taken from the run folder; kl_min=0, so
    # the cost does not depend on how the images are grouped either.
    args = [str(ROOT / "train.py"), "evaluate", "with", f"load_model_path={two_ranks}",
            "est_marglik=2"]
    commands = {"2 ranks x 4": mpiexec(2, args),
                "1 process x 8": [sys.executable] + args + ["n_batch=8"],
                "1 process x 5": [sys.executable] + args + ["n_batch=5"]}
    outputs = {name: run(command, tmp_path).stdout for name, command in commands.items()}
    summaries = {name: json.loads(out.strip().splitlines()[-1]) for name, out in outputs.items()}
    expected = summaries.pop("1 process x 8")
    assert expected["n_images"] == 96
    for name, summary in summaries.items():
        for key in ("cost", "elbo", "marglik"):
            assert summary[key] == pytest.approx(expected[key], rel=1e-6), (name, key)
        for layer, numbers in expected["layers"].items():
            assert summary["layers"][layer] == pytest.approx(numbers, rel=1e-6), (name, layer)
    assert outputs["2 ranks x 4"].count("the original's bits/dim") == 1  # rank 1 prints nothing


def test_sigint_stops_both_ranks_at_one_step_and_sigkill_of_a_rank_resumes_exactly(
        two_ranks, tmp_path):
    stops = tmp_path / "stops"
    stops.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = launch(mpiexec(2, patched_train(f"record_checkpoints={stops}",
                                           ["with"] + TINY + ["n_batch=4", SEED])), logs)
    wait_for_checkpoints(proc, logs, 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    folder = only_folder(logs)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert f"resume={folder}" in out and out.count("Stopped by") == 1
    saved = load_checkpoint(folder)[1]["loop"]
    for rank in (0, 1):  # every rank stopped after the step the checkpoint holds
        assert json.loads((stops / f"rank{rank}.json").read_text()) == \
            [saved["epoch"], saved["images_done"]]
    # Resume, and kill -9 rank 1 while rank 0 checkpoints after every step.
    proc = launch(mpiexec(2, train([f"resume={folder}", "n_batch=4"])), logs)
    wait_for_checkpoints(proc, logs, 4)
    os.kill(rank_pid(1, logs), signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    run(mpiexec(2, train([f"resume={folder}", "n_batch=4"])), logs)
    assert (folder / "results.txt").read_text() == (two_ranks / "results.txt").read_text()
    got, want = load_ndict(folder / "weights.ndict.tar.gz"), load_ndict(two_ranks / "weights.ndict.tar.gz")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    arrays, meta = load_checkpoint(folder)
    expected_arrays, expected_meta = load_checkpoint(two_ranks)
    assert meta["loop"] == expected_meta["loop"]
    for name in expected_arrays:
        np.testing.assert_array_equal(arrays[name], expected_arrays[name], err_msg=name)


# 96 images in global minibatches of 2 x 4: an epoch is 12 steps.
@pytest.mark.parametrize("drift_at_step,checkpoint_minutes,checkpoint_images", [
    (3, 0, 16),      # checkpoints after every step: the one after step 3 is refused
    (12, 1000, None),  # none within the epoch: the report after step 12 writes nothing
])
def test_ranks_whose_parameters_differ_stop_before_anything_is_written_from_them(
        tmp_path, drift_at_step, checkpoint_minutes, checkpoint_images):
    args = [a for a in TINY if "checkpoint" not in a] + \
        ["n_batch=4", f"checkpoint_minutes={checkpoint_minutes}", SEED]
    proc = run(mpiexec(2, patched_train(f"drift_at_update={drift_at_step}", ["with"] + args)),
               tmp_path, check=False, timeout=600)
    assert proc.returncode != 0
    assert "the parameters of rank(s) [1] differ from rank 0's" in proc.stderr
    assert "Traceback" not in proc.stderr
    folder = only_folder(tmp_path)
    assert not (folder / "weights.ndict.tar.gz").exists()
    if checkpoint_images is None:
        assert not (folder / "checkpoint.npz").exists()
    else:  # the last checkpoint is the one before the drift
        assert load_checkpoint(folder)[1]["loop"]["images_done"] == checkpoint_images


def launch(command, logs):
    return subprocess.Popen(command, env={**ENV, "ML_LOG_PATH": str(logs)}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rank_pid(rank, logs):
    """The process id of MPI rank ``rank`` of the job logging to ``logs``."""
    wanted = {f"PMI_RANK={rank}".encode(), f"ML_LOG_PATH={logs}".encode()}
    for entry in Path("/proc").iterdir():
        try:
            if wanted <= set((entry / "environ").read_bytes().split(b"\0")):
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process of rank {rank}")


def test_a_non_finite_gradient_on_one_rank_stops_both(tmp_path):
    # Without a seed: the ranks must all take rank 0's.
    proc = run(mpiexec(2, patched_train("poison_gradient=3", ["with"] + TINY + ["n_batch=4"])),
               tmp_path, check=False,
               timeout=600)
    assert proc.returncode != 0
    assert "non-finite cost or gradient at epoch 0, image 16" in proc.stderr
    assert "Traceback" not in proc.stderr
    arrays, meta = load_checkpoint(only_folder(tmp_path))
    assert meta["loop"]["images_done"] == 16  # the two good steps, then the stop
    assert np.isfinite(arrays["params"]).all()


def test_a_rank_that_cannot_start_ends_the_run_with_its_error(tmp_path):
    """Rank 0 finds CIFAR-10, rank 1 (as on another machine) does not."""
    cifar = tmp_path / "cifar"
    write_fake_cifar10(cifar, n_per_batch=10, seed=0)
    program = [sys.executable, str(ROOT / "train.py"), "with", "problem=cifar10", "n_h=8",
               "n_z=4", "depths=[1,1]", "n_batch=4"]
    command = [MPIEXEC, "-n", "1", "-env", "CIFAR10_PATH", str(cifar)] + program + \
        [":", "-n", "1", "-env", "CIFAR10_PATH", "/nowhere"] + program
    proc = run(command, tmp_path / "logs", check=False, timeout=300)
    assert proc.returncode != 0
    assert "CIFAR10_PATH=/nowhere is not an existing folder" in proc.stderr
    assert "Traceback" not in proc.stderr
