"""One run over two MPI ranks (mpiexec from pytest, tiny model): the same numbers as one
process with the doubled minibatch, evaluation as one process, and faults that end or
stop every rank together and resume exactly."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cifar_files import write_fake_cifar10
from models import load_ndict
from models.checkpoint import load_checkpoint
from runs import wait_for_checkpoints

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


def test_evaluation_on_two_ranks_equals_one_process(two_ranks, tmp_path):
    # No data options: the run's (its seed too) are taken from the run folder.
    args = [str(ROOT / "train.py"), "evaluate", "with", f"load_model_path={two_ranks}",
            "est_marglik=2"]
    outputs = [run(command, tmp_path).stdout
               for command in (mpiexec(2, args), [sys.executable] + args)]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    layers = [summary.pop("layers") for summary in summaries]
    assert summaries[0] == summaries[1] and summaries[0]["n_images"] == 96
    for name, layer in layers[1].items():  # sums of per-rank sums: float64 rounding apart
        assert layers[0][name] == pytest.approx(layer, rel=1e-9), name
    assert outputs[0].count("the original's bits/dim") == 1  # rank 1 prints nothing


def test_sigint_stops_both_ranks_at_one_step_and_sigkill_of_a_rank_resumes_exactly(
        two_ranks, tmp_path):
    proc = launch(mpiexec(2, train(["n_batch=4"])), tmp_path)
    wait_for_checkpoints(proc, tmp_path, 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    folder = only_folder(tmp_path)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert f"resume={folder}" in out and out.count("Stopped by") == 1
    # Resume, and kill -9 rank 1 while rank 0 checkpoints after every step.
    proc = launch(mpiexec(2, train([f"resume={folder}", "n_batch=4"])), tmp_path)
    wait_for_checkpoints(proc, tmp_path, 4)
    os.kill(rank_pid(1, tmp_path), signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    run(mpiexec(2, train([f"resume={folder}", "n_batch=4"])), tmp_path)
    assert (folder / "results.txt").read_text() == (two_ranks / "results.txt").read_text()
    got, want = load_ndict(folder / "weights.ndict.tar.gz"), load_ndict(two_ranks / "weights.ndict.tar.gz")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    arrays, meta = load_checkpoint(folder)
    expected_arrays, expected_meta = load_checkpoint(two_ranks)
    assert meta["loop"] == expected_meta["loop"]
    for name in expected_arrays:
        np.testing.assert_array_equal(arrays[name], expected_arrays[name], err_msg=name)


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
    driver = textwrap.dedent(f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        import train
        if train.processes.rank == 1:  # rank 1 alone gets a NaN in its third gradient
            original, calls = train.ResNetVAE.gradient, []
            def poisoned(self, x, eps):
                cost, flat = original(self, x, eps)
                calls.append(1)
                if len(calls) == 3:
                    flat[0] = np.nan
                return cost, flat
            train.ResNetVAE.gradient = poisoned
        train.main([{str(ROOT / "train.py")!r}, "with"] + {TINY + ["n_batch=4"]!r})
    """)  # without a seed: the ranks must all take rank 0's
    proc = run(mpiexec(2, ["-c", driver]), tmp_path, check=False, timeout=600)
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
