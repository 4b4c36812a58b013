"""train.py end to end, in subprocesses, on a tiny CIFAR-10-format folder."""
import ast
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import numpy as np
from PIL import Image

from cifar_files import write_fake_cifar10
from data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["quickstart", "problem=cifar10", "n_train=32", "n_batch=16", "n_epochs=2", "n_h=8", "n_z=4",
        "depths=[1,1]", "margs.posterior=down_iaf2_nl", "seed=7"]


def run(args, cifar, log_path, check=True):
    env = {**os.environ, "CIFAR10_PATH": str(cifar), "ML_LOG_PATH": str(log_path)}
    if cifar is None:
        env.pop("CIFAR10_PATH")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py")] + args, env=env,
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    write_fake_cifar10(folder, n_per_batch=20, seed=0)
    return folder


@pytest.fixture(scope="module")
def observer(tmp_path_factory):
    return tmp_path_factory.mktemp("sacred")


@pytest.fixture(scope="module")
def two_runs(cifar, tmp_path_factory, observer):
    """The same tiny run twice with the same seed, the first watched by sacred's
    file-storage observer."""
    logs = tmp_path_factory.mktemp("logs")
    run(["-F", str(observer), "with"] + TINY, cifar, logs)
    run(["with"] + TINY, cifar, logs)
    return sorted(logs.iterdir())


def test_a_run_writes_results_samples_weights_and_logs(two_runs):
    folder = two_runs[0]
    lines = (folder / "results.txt").read_text().splitlines()
    header = lines[0].split()
    assert header[0] == "Epoch" and "cost" in header and "elbo" in header
    assert [line.split()[0] for line in lines[1:]] == ["0", "1"]
    for name in ("weights.ndict.tar.gz", "weights_best.ndict.tar.gz", "log.txt", "command.sh",
                 "sample_0.png", "sample_fixed1_1.png"):
        assert (folder / name).exists(), name
    grid = np.asarray(Image.open(folder / "sample_1.png"))
    assert grid.shape == (320, 320, 3) and grid.std() > 0
    log = (folder / "log.txt").read_text()
    assert "Run folder" in log and "Valid cost" in log
    assert "margs.posterior=down_iaf2_nl" in (folder / "command.sh").read_text()


def test_sacred_observer_receives_every_reported_metric(two_runs, observer):
    metrics = json.loads((observer / "1" / "metrics.json").read_text())
    lines = (two_runs[0] / "results.txt").read_text().splitlines()
    header, last = lines[0].split()[1:], lines[-1].split()[1:]
    logged = dict(zip(header, map(float, last)))
    for name in ("train.cost", "test.cost", "test.elbo", "logsd_x", "test.kl.000_000",
                 "test.kl.001_000"):
        assert metrics[name]["steps"] == [0, 1], name
    assert metrics["test.cost"]["values"][-1] == pytest.approx(logged["cost"])
    assert metrics["test.kl.001_000"]["values"][-1] == pytest.approx(logged["cost_z001_000"])
    running = metrics["train.running_cost"]
    assert running["steps"] == [1, 2, 3, 4]  # training steps: 2 epochs of 2 minibatches
    assert running["values"][1] == pytest.approx(metrics["train.cost"]["values"][0])


def test_same_seed_gives_the_same_numbers(two_runs):
    first, second = ((f / "results.txt").read_text() for f in two_runs)
    assert first == second


def test_evaluate_reproduces_the_logged_test_cost(two_runs, cifar, tmp_path):
    folder = two_runs[0]
    lines = (folder / "results.txt").read_text().splitlines()
    header, last = lines[0].split()[1:], lines[-1].split()[1:]
    logged = dict(zip(header, map(float, last)))
    proc = run(["evaluate", "with"] + TINY + [f"load_model_path={folder}", "est_marglik=3"],
               cifar, tmp_path)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cost"] == pytest.approx(logged["cost"], rel=1e-5)
    assert summary["elbo"] == pytest.approx(logged["elbo"], rel=1e-5)
    # Importance sampling can only tighten the bound (up to sampling noise).
    assert summary["marglik"] < summary["elbo"] + 0.05


# The options a user gives to inspect a run: the data, not the model (saved with the run).
INSPECT = ["problem=cifar10", "n_train=32", "n_batch=16", "seed=7"]


def test_evaluate_takes_the_model_options_saved_with_the_run_and_reports_each_layer(
        two_runs, cifar, tmp_path):
    folder = two_runs[0]
    lines = (folder / "results.txt").read_text().splitlines()
    logged = dict(zip(lines[0].split()[1:], map(float, lines[-1].split()[1:])))
    proc = run(["evaluate", "with"] + INSPECT + [f"load_model_path={folder}"], cifar, tmp_path)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cost"] == pytest.approx(logged["cost"], rel=1e-5)
    assert set(summary["layers"]) == {"000_000", "001_000"}
    for name, layer in summary["layers"].items():
        assert layer["kl_nats"] == pytest.approx(logged["cost_z" + name], rel=1e-4)
        assert layer["maps"] == 4 and 0 <= layer["floored_maps"] <= 4
        assert layer["units"] == 4 * (16 if name == "000_000" else 8) ** 2
        assert 0 <= layer["active_units"] <= layer["units"]
    assert "active units" in proc.stdout and "maps below floor" in proc.stdout


def test_model_options_that_contradict_the_saved_run_are_refused(two_runs, cifar, tmp_path):
    proc = run(["evaluate", "with"] + INSPECT + [f"load_model_path={two_runs[0]}", "n_h=16",
                                                 "margs.depth_ar=2"], cifar, tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "n_h: 8 -> 16" in proc.stderr and "margs.depth_ar: 1 -> 2" in proc.stderr


def test_samples_at_temperature_zero_do_not_depend_on_the_seed(two_runs, cifar, tmp_path):
    def samples(*args):
        logs = tmp_path / "-".join(args)
        run(["sample", "with", f"load_model_path={two_runs[0]}", "n_samples=6"] + list(args),
            cifar, logs)
        (folder,) = logs.iterdir()
        assert (folder / "samples.png").exists()
        return np.load(folder / "samples.npy", allow_pickle=False)
    cold = samples("temperature=0", "seed=1")
    assert cold.shape == (6, 3, 32, 32) and cold.dtype == np.uint8
    np.testing.assert_array_equal(samples("temperature=0", "seed=2"), cold)
    assert not np.array_equal(samples("temperature=1", "seed=2"), cold)


def test_reconstruct_writes_the_images_then_one_row_per_layer(two_runs, cifar, tmp_path,
                                                                monkeypatch):
    run(["reconstruct", "with", f"load_model_path={two_runs[0]}", "n_images=3"] + INSPECT,
        cifar, tmp_path)
    (folder,) = tmp_path.iterdir()
    rows = np.load(folder / "reconstruct.npy", allow_pickle=False)
    assert rows.shape == (3 * 3, 3, 32, 32)
    monkeypatch.setenv("CIFAR10_PATH", str(cifar))
    np.testing.assert_array_equal(rows[:3], load_dataset("cifar10", 32, seed=7)[1][:3])
    assert np.asarray(Image.open(folder / "reconstruct.png")).shape == (3 * 32, 3 * 32, 3)


def test_print_params_needs_no_data_and_counts_the_table3_model(tmp_path):
    proc = run(["print_params", "with", "table3"], None, tmp_path)
    lines = proc.stdout.strip().splitlines()
    reference = (ROOT / "tests" / "data" / "params_table3.txt").read_text().splitlines()[1:]
    expected = dict(line.split(" ", 1) for line in reference if line.strip())
    assert dict(line.split(" ", 1) for line in lines[:-1]) == expected
    total = sum(int(np.prod(ast.literal_eval(shape))) for shape in expected.values())
    assert lines[-1] == f"total {total}"


def _corrupt_batch(folder):
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:1000])


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _crafted_pickle(folder):
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Exploit()}, f, protocol=2)


@pytest.mark.parametrize("case,args,prepare,expected", [
    ("unset", [], "unset", "CIFAR10_PATH is not set"),
    ("wrong path", [], "missing", "is not an existing folder"),
    ("truncated", [], _corrupt_batch, "data_batch_2 is truncated or corrupt"),
    ("crafted", [], _crafted_pickle, "refusing to load"),
    ("posterior", ["margs.posterior=down_iaf3"], None, "valid choices: up_diag"),
    ("typo", ["n_hh=64"], None, "did you mean n_h?"),
    ("typo margs", ["margs.depthar=2"], None, "did you mean margs.depth_ar?"),
    ("no levels", ["depths=[]"], None, "need at least one level"),
    ("batch", ["n_batch=64"], None, "n_batch=64 is larger than the 32 training images"),
    ("reports", ["n_reporting=0"], None, "n_reporting=0 must be a positive integer"),
    ("est data", ["est_marglik_data=test"], None, "valid choices: valid, train"),
])
def test_bad_input_exits_nonzero_with_one_sentence(case, args, prepare, expected, tmp_path):
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    write_fake_cifar10(cifar, n_per_batch=20, seed=0)
    if callable(prepare):
        prepare(cifar)
    path = {"unset": None, "missing": tmp_path / "nowhere"}.get(prepare, cifar)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "with"] + TINY + args,
                          env={**{k: v for k, v in os.environ.items() if k != "CIFAR10_PATH"},
                               **({"CIFAR10_PATH": str(path)} if path else {}),
                               "ML_LOG_PATH": str(tmp_path / "logs")},
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "pwned").exists()


def test_top_level_model_keys_set_the_options_and_default_to_the_models():
    import train
    from models.config import ModelConfig
    from models.run.settings import SHORTCUTS
    margs = train.resolved_config()["margs"]
    assert ModelConfig(**margs) == ModelConfig()
    # The original's defaults, as the README's options table states them.
    assert (margs["n_h1"], margs["n_h2"], margs["n_z"]) == (160, 160, 32)
    assert list(margs["depths"]) == [2, 2]
    assert (margs["posterior"], margs["prior"], margs["kl_min"], margs["depth_ar"]) == \
        ("down_diag", "diag", 0.25, 1)
    assert (tuple(margs["shape_x"]), margs["px"], margs["pad_x"]) == ((3, 32, 32), "logistic", 0)
    cfg = train.resolved_config("quickstart", n_h=12, pad_x=2)
    assert cfg["margs"]["n_h1"] == cfg["margs"]["n_h2"] == 12
    for key in SHORTCUTS:
        assert cfg["margs"][key] == cfg[key], key


def test_progress_rate_is_measured_from_the_first_compiled_step_on(monkeypatch, capsys):
    from models.run import report
    progress = report.Progress(n_images=1000, every=30.0)
    # The first step ends after 100 s of compiling; then 16 images every second.
    for now, done in [(100.0, 16), (115.0, 256), (131.0, 512)]:
        monkeypatch.setattr(report.time, "time", lambda: now)
        progress.update(done, running_cost=3.5)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["  512/1000 images, 16.0 images/s, train 3.5000 bits/dim, "
                     "epoch ETA 0.5 min"]
