"""Train the IAF ResNet VAE and report bits/dim: a sacred experiment (SPEC §7, §8).

    python train.py with problem=cifar10 n_h=160 depths=[10,10] margs.depth_ar=2 \\
        margs.posterior=down_iaf2_nl margs.prior=diag margs.kl_min=0.25
    python train.py with quickstart                 # a 5-minute run on toy images
    python train.py evaluate with load_model_path=runs/<run> [est_marglik=K]
    python train.py print_params with table3
"""
import contextlib
import difflib
import json
import math
import os
import shlex
import sys
import time

import numpy as np
from sacred import Experiment
from sacred.utils import SacredError

from configs import NAMED_CONFIGS
from data import DataError, load_dataset
from data.png import image_grid, write_png
from models import ConfigError, ResNetVAE, WeightsError, load_ndict, save_ndict

ex = Experiment("iaf", save_git_info=False)
for _name, _updates in NAMED_CONFIGS.items():
    ex.add_named_config(_name, _updates)


@ex.config
def config():
    problem = "cifar10"  # 'cifar10' (from $CIFAR10_PATH) or 'toy' (generated, no download)
    n_batch = 16  # minibatch size
    n_reporting = 10  # epochs between reports (after epochs 0..10)
    n_epochs = 0  # stop after this many epochs; 0 = never, as the original
    px = "logistic"
    pad_x = 0
    shape_x = (3, 32, 32)
    n_h = 160
    n_z = 32
    n_h1 = n_h
    n_h2 = n_h
    n_train = 0  # > 0: use only the first n_train training AND test images
    model_type = "cvae1"
    depths = [2, 2]
    margs = {"shape_x": shape_x, "depths": depths, "n_h1": n_h1, "n_h2": n_h2, "n_z": n_z,
             "prior": "diag", "posterior": "down_diag", "px": px, "nl": "elu",
             "kernel_x": (5, 5), "kernel_h": (3, 3), "kl_min": 0.25, "optim": "adamax",
             "alpha": 0.002, "beta1": 0.1, "pad_x": pad_x, "weightsharing": False,
             "depth_ar": 1, "downsample_type": "nn"}
    save_model = True  # also keep weights_best.ndict.tar.gz
    load_model_path = None  # a folder holding weights.ndict.tar.gz to start from
    load_model_complete = True  # False: tolerate parameters missing from that file
    est_marglik = 0  # K > 0: importance-sampled log-likelihood with K samples, then stop
    est_marglik_data = "valid"  # ... on 'valid' (the test set) or 'train'


class Error(SacredError):
    """A user-facing error: one sentence, no traceback."""

    def __init__(self, message):
        super().__init__(message, print_traceback=False)


Error.__module__ = "train"
USER_ERRORS = (DataError, ConfigError, WeightsError, ValueError)
CONFIG_KEYS = ("problem n_batch n_reporting n_epochs px pad_x shape_x n_h n_z n_h1 n_h2 "
               "n_train model_type depths margs save_model load_model_path "
               "load_model_complete est_marglik est_marglik_data seed").split()
MARGS_KEYS = ("shape_x depths n_h1 n_h2 n_z prior posterior px nl kernel_x kernel_h kl_min "
              "optim alpha beta1 pad_x weightsharing depth_ar downsample_type").split()


def _check_keys(keys, valid, prefix=""):
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else \
                f"valid keys: {', '.join(prefix + v for v in valid)}"
            raise Error(f"unknown config key {prefix + key!r}; {hint}")


@ex.config_hook
def reject_unknown_keys(config, command_name, logger):
    """Sacred only warns about a misspelled key (it would be silently unused): refuse it."""
    _check_keys(config, CONFIG_KEYS)
    _check_keys(config.get("margs", {}), MARGS_KEYS, prefix="margs.")
    return {}


# -- pieces of the run --------------------------------------------------------------
class Tee:
    """Write console output to a log file too."""

    def __init__(self, stream, path):
        self.stream, self.file = stream, open(path, "a", buffering=1)

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def make_run_folder():
    """``$ML_LOG_PATH/<time>/`` as the original, else ``./runs/<time>/``."""
    root = os.environ.get("ML_LOG_PATH") or "runs"
    path = os.path.join(root, time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    os.makedirs(path)
    return path


@ex.capture
def get_data(problem, n_train, n_batch, shape_x, _seed):
    train_x, test_x = load_dataset(problem, n_train, seed=_seed)
    if n_batch > len(train_x):
        raise Error(f"n_batch={n_batch} is larger than the {len(train_x)} training images; "
                    f"use a smaller n_batch or a larger n_train")
    if train_x.shape[1:] != tuple(shape_x):
        raise Error(f"problem {problem!r} has images of shape {train_x.shape[1:]}, "
                    f"but shape_x={tuple(shape_x)}")
    return train_x, test_x


@ex.capture
def build_model(margs, model_type, _seed):
    if model_type != "cvae1":
        raise Error(f"unknown model_type {model_type!r}; valid choices: cvae1")
    return ResNetVAE(**margs, seed=_seed)


@ex.capture
def initialise(model, init_x, load_model_path, load_model_complete):
    """Data-dependent init, or weights from ``load_model_path`` (or both if incomplete)."""
    if load_model_path is None or not load_model_complete:
        for name in model.data_init(init_x):
            print(f"warning: a channel of {name} has std 0 on the init batch; "
                  f"skipped its data-dependent init")
    if load_model_path is not None:
        path = os.path.join(load_model_path, "weights.ndict.tar.gz")
        print(f"Loading weights from {path}")
        missing = model.set_weights(load_ndict(path), complete=load_model_complete)
        if missing:
            print(f"warning: {len(missing)} parameters not in the file kept their init")


def evaluate_set(model, x, n_batch):
    """Mean of every evaluation output over ``x``, in order, in minibatches; the same
    weights give the same numbers (the evaluation noise restarts each pass)."""
    model.reset_eval_noise()
    sums = {}
    for start in range(0, len(x), n_batch):
        for key, value in model.evaluate(x[start:start + n_batch]).items():
            sums[key] = sums.get(key, 0.0) + float(value.sum())
    return {key: total / len(x) for key, total in sums.items()}


def estimate_marglik(model, x, n_batch, n_samples, shape_x):
    """Importance-sampled ``-log p(x)`` in bits/dim: log-mean-exp over K posterior samples
    of ``log p(x|z) + log p(z) - log q(z|x)`` per image (free bits never enter it)."""
    log_w = []
    for k in range(n_samples):
        log_w.append(np.concatenate([model.evaluate(x[s:s + n_batch])["log_weight"]
                                     for s in range(0, len(x), n_batch)]).astype(np.float64))
        stacked = np.stack(log_w)
        top = stacked.max(axis=0)
        log_px = top + np.log(np.exp(stacked - top).mean(axis=0))
        bits = -log_px.mean() / (np.prod(shape_x) * math.log(2))
        print(f"Estimate of -log p(x) after {k + 1} samples: {bits:.5f} bits/dim")
    return bits


def write_samples(model, folder, epoch, eps_fixed, rng):
    fresh = model.decode(model.sample_noise(100, rng))
    write_png(os.path.join(folder, f"sample_{epoch}.png"), image_grid(fresh))
    write_png(os.path.join(folder, f"sample_fixed1_{epoch}.png"),
              image_grid(model.decode(eps_fixed)))


def append_results(folder, epoch, results):
    path = os.path.join(folder, "results.txt")
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write("Epoch " + " ".join(results) + "\n")
        f.write(f"{epoch} " + " ".join(repr(v) for v in results.values()) + "\n")


class Progress:
    """A line every ``every`` seconds within an epoch: images/s, running bits/dim, ETA."""

    def __init__(self, n_images, every=30.0):
        self.n_images, self.every = n_images, every
        self.start = self.last = time.time()

    def update(self, done, running_cost):
        now = time.time()
        if now - self.last < self.every or done >= self.n_images:
            return
        self.last = now
        rate = done / (now - self.start)
        eta = (self.n_images - done) / rate
        print(f"  {done}/{self.n_images} images, {rate:.1f} images/s, "
              f"train {running_cost:.4f} bits/dim, epoch ETA {eta / 60:.1f} min", flush=True)


def train_epoch(model, train_x, n_batch, rng, epoch):
    """One pass in random minibatch order; returns the mean training cost."""
    order = rng.permutation(len(train_x))
    total, progress = 0.0, Progress(len(train_x))
    for step, start in enumerate(range(0, len(order), n_batch)):
        cost = model.train_step(train_x[order[start:start + n_batch]])
        if not np.all(np.isfinite(cost)):
            raise FloatingPointError(f"the training cost is NaN/inf at epoch {epoch}, step "
                                     f"{step}; the update was not applied")
        total += float(cost.sum())
        progress.update(start + len(cost), total / (start + len(cost)))
    return total / len(train_x)


# -- commands -----------------------------------------------------------------------
@contextlib.contextmanager
def user_errors():
    """Turn the errors a user can fix (bad data, config, weights) into one-line messages."""
    try:
        yield
    except USER_ERRORS as err:
        raise Error(str(err)) from None


@ex.main
def train(n_batch, n_reporting, n_epochs, shape_x, save_model, est_marglik, est_marglik_data,
          _seed):
    """Train, reporting test bits/dim, weights and samples into a new run folder."""
    with user_errors():
        return run_training(n_batch, n_reporting, n_epochs, shape_x, save_model, est_marglik,
                            est_marglik_data, _seed)


def run_training(n_batch, n_reporting, n_epochs, shape_x, save_model, est_marglik,
                 est_marglik_data, seed):
    folder = make_run_folder()
    sys.stdout = Tee(sys.stdout, os.path.join(folder, "log.txt"))
    with open(os.path.join(folder, "command.sh"), "w") as f:
        f.write(" ".join(shlex.quote(a) for a in ["python"] + sys.argv) + "\n")
    print(f"Run folder: {folder}")
    train_x, test_x = get_data()
    model = build_model()
    initialise(model, train_x[:n_batch])
    if est_marglik > 0:
        data = test_x if est_marglik_data == "valid" else train_x
        return estimate_marglik(model, data, n_batch, est_marglik, shape_x)

    order_rng, noise_rng = np.random.RandomState(seed + 1), np.random.RandomState(seed + 2)
    eps_fixed = model.sample_noise(100, noise_rng)
    best = None
    print("Training (the first minibatch compiles the training step)")
    epoch = 0
    while n_epochs <= 0 or epoch < n_epochs:
        t0 = time.time()
        try:
            train_cost = train_epoch(model, train_x, n_batch, order_rng, epoch)
        except FloatingPointError as err:
            save_ndict(model.get_weights(), os.path.join(folder, "weights.ndict.tar.gz"))
            raise Error(f"{err}; the last good weights are in {folder}") from None
        if epoch <= 10 or epoch % n_reporting == 0:
            results = evaluate_set(model, test_x, n_batch)
            weights = model.get_weights()
            save_ndict(weights, os.path.join(folder, "weights.ndict.tar.gz"))
            if best is None or results["cost"] < best:
                best = results["cost"]
                if save_model:
                    save_ndict(weights, os.path.join(folder, "weights_best.ndict.tar.gz"))
            append_results(folder, epoch, results)
            write_samples(model, folder, epoch, eps_fixed, noise_rng)
            if epoch == 0:
                print("logdir: t: Epoch: Train cost: Valid cost: Best: log(stdev) of p(x|z):")
            logsd = float(model.avg_params["logsd_x"].get_value()) \
                if "logsd_x" in model.avg_params else 0.0
            print(f"{os.path.basename(folder)} {time.time() - t0:.2f} {epoch} {train_cost:.5f} "
                  f"{results['cost']:.5f} {best:.5f} {logsd}", flush=True)
        epoch += 1
    return best


@ex.command
def evaluate(n_batch, shape_x, load_model_path, est_marglik, est_marglik_data):
    """Test bits/dim of saved weights; the last line is JSON for scripts."""
    with user_errors():
        return run_evaluation(n_batch, shape_x, load_model_path, est_marglik, est_marglik_data)


def run_evaluation(n_batch, shape_x, load_model_path, est_marglik, est_marglik_data):
    if load_model_path is None:
        raise Error("evaluate needs load_model_path=DIR, a folder with weights.ndict.tar.gz")
    train_x, test_x = get_data()
    data = test_x if est_marglik_data == "valid" else train_x
    model = build_model()
    initialise(model, train_x[:n_batch])
    results = evaluate_set(model, data, n_batch)
    summary = {"cost": results["cost"], "elbo": results["elbo"], "n_images": len(data)}
    print(f"cost (the original's bits/dim, free bits applied): {results['cost']:.5f}")
    print(f"-ELBO (bits/dim): {results['elbo']:.5f}")
    if est_marglik > 0:
        summary["marglik"] = estimate_marglik(model, data, n_batch, est_marglik, shape_x)
        summary["est_marglik"] = est_marglik
    print(json.dumps(summary))
    return summary


@ex.command(unobserved=True)
def print_params():
    """Every parameter as ``name shape``, then the total count; compiles nothing."""
    with user_errors():
        model = build_model()
    total = 0
    for name, var in sorted(model.params.items()):
        shape = var.get_value(borrow=True).shape
        total += int(np.prod(shape))
        print(name, shape)
    print(f"total {total}")


if __name__ == "__main__":
    ex.run_commandline()
