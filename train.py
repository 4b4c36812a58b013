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
import signal
import sys
import time

import numpy as np
from sacred import Experiment
from sacred.utils import SacredError

from configs import NAMED_CONFIGS
from data import DataError, load_dataset
from data.png import image_grid, write_png
from data.plot import plot_learning_curves
from models import ConfigError, ResNetVAE, WeightsError, load_ndict, save_ndict
from models.checkpoint import (CheckpointError, load_checkpoint, model_arrays, restore_model,
                               save_checkpoint)

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
    resume = None  # a run folder: continue that run exactly where its checkpoint left it
    checkpoint_minutes = 5.0  # also checkpoint this often within an epoch (wall time)
    skip_nonfinite = False  # True: skip (and count) steps with a NaN/inf cost or gradient


class Error(SacredError):
    """A user-facing error: one sentence, no traceback."""

    def __init__(self, message):
        super().__init__(message, print_traceback=False)


Error.__module__ = "train"
USER_ERRORS = (DataError, ConfigError, WeightsError, CheckpointError)
CONFIG_KEYS = ("problem n_batch n_reporting n_epochs px pad_x shape_x n_h n_z n_h1 n_h2 "
               "n_train model_type depths margs save_model load_model_path "
               "load_model_complete est_marglik est_marglik_data resume checkpoint_minutes "
               "skip_nonfinite seed").split()
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


def get_data(cfg):
    for key in ("n_batch", "n_reporting"):
        if int(cfg[key]) < 1:
            raise Error(f"{key}={cfg[key]} must be a positive integer")
    train_x, test_x = load_dataset(cfg["problem"], cfg["n_train"], seed=cfg["seed"])
    if cfg["n_batch"] > len(train_x):
        raise Error(f"n_batch={cfg['n_batch']} is larger than the {len(train_x)} training "
                    f"images; use a smaller n_batch or a larger n_train")
    if train_x.shape[1:] != tuple(cfg["shape_x"]):
        raise Error(f"problem {cfg['problem']!r} has images of shape {train_x.shape[1:]}, "
                    f"but shape_x={tuple(cfg['shape_x'])}")
    return train_x, test_x


def build_model(cfg):
    if cfg["model_type"] != "cvae1":
        raise Error(f"unknown model_type {cfg['model_type']!r}; valid choices: cvae1")
    return ResNetVAE(**cfg["margs"], seed=cfg["seed"])


def initialise(model, init_x, cfg):
    """Data-dependent init, or weights from ``load_model_path`` (or both if incomplete)."""
    path, complete = cfg["load_model_path"], cfg["load_model_complete"]
    if path is None or not complete:
        for name in model.data_init(init_x):
            print(f"warning: a channel of {name} has std 0 on the init batch; "
                  f"skipped its data-dependent init")
    if path is not None:
        path = os.path.join(path, "weights.ndict.tar.gz")
        print(f"Loading weights from {path}")
        missing = model.set_weights(load_ndict(path), complete=complete)
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


def rng_arrays(prefix, rng):
    """A numpy RandomState's state as arrays (and its scalars as a JSON-able list)."""
    name, keys, pos, has_gauss, cached = rng.get_state()
    return {f"{prefix}/keys": keys}, [name, int(pos), int(has_gauss), float(cached)]


def set_rng(rng, keys, scalars):
    name, pos, has_gauss, cached = scalars
    rng.set_state((name, keys, pos, has_gauss, cached))


class Run:
    """A training run: the model, the data, and the loop's state, which a checkpoint holds
    entirely, so that a resumed run continues bit for bit (SPEC §7 plus issue #4)."""

    def __init__(self, cfg, folder):
        self.cfg, self.folder = cfg, folder
        self.train_x, self.test_x = get_data(cfg)
        self.model = build_model(cfg)
        self.order_rng = np.random.RandomState(cfg["seed"] + 1)
        self.noise_rng = np.random.RandomState(cfg["seed"] + 2)
        self.eps_fixed = None
        self.epoch, self.step, self.order, self.cost_sum = 0, 0, None, 0.0
        self.best, self.skipped, self.history = None, 0, {"train": [], "test": []}
        self.stop_signal = None
        self.last_checkpoint = time.time()

    # -- state -----------------------------------------------------------------------
    def start(self):
        self.eps_fixed = self.model.sample_noise(100, self.noise_rng)
        initialise(self.model, self.train_x[:self.cfg["n_batch"]], self.cfg)

    def save(self):
        arrays = model_arrays(self.model)
        order_arrays, order_scalars = rng_arrays("order_rng", self.order_rng)
        noise_arrays, noise_scalars = rng_arrays("noise_rng", self.noise_rng)
        arrays.update(order_arrays, **noise_arrays)
        arrays.update({f"eps_fixed/{k}": e for k, e in enumerate(self.eps_fixed)})
        if self.order is not None:
            arrays["order"] = self.order
        meta = {"config": self.cfg, "epoch": self.epoch, "step": self.step,
                "cost_sum": self.cost_sum, "best": self.best, "skipped": self.skipped,
                "history": self.history, "order_rng": order_scalars,
                "noise_rng": noise_scalars}
        t0 = time.time()
        save_checkpoint(self.folder, arrays, meta)
        self.last_checkpoint = time.time()
        return self.last_checkpoint - t0

    def restore(self, arrays, meta):
        restore_model(self.model, arrays)
        set_rng(self.order_rng, arrays["order_rng/keys"], meta["order_rng"])
        set_rng(self.noise_rng, arrays["noise_rng/keys"], meta["noise_rng"])
        self.eps_fixed = [arrays[f"eps_fixed/{k}"] for k in range(len(self.model.all_layers))]
        self.order = arrays.get("order")
        for key in ("epoch", "step", "cost_sum", "best", "skipped", "history"):
            setattr(self, key, meta[key])

    # -- loop ------------------------------------------------------------------------
    def train(self):
        cfg = self.cfg
        while cfg["n_epochs"] <= 0 or self.epoch < cfg["n_epochs"]:
            t0 = time.time()
            if not self.train_epoch():
                return False
            train_cost = self.cost_sum / len(self.train_x)
            self.history["train"].append([self.epoch, train_cost])
            if self.epoch <= 10 or self.epoch % cfg["n_reporting"] == 0:
                self.report(time.time() - t0, train_cost)
            self.epoch, self.step, self.order, self.cost_sum = self.epoch + 1, 0, None, 0.0
            self.save()
        return True

    def train_epoch(self):
        """Minibatches of the current epoch from ``self.step`` on; False if stopped."""
        n_batch = self.cfg["n_batch"]
        if self.order is None:
            self.order = self.order_rng.permutation(len(self.train_x))
        n_steps = -(-len(self.order) // n_batch)
        progress = Progress(len(self.order))
        while self.step < n_steps:
            start = self.step * n_batch
            cost, applied = self.model.train_step(self.train_x[self.order[start:start + n_batch]])
            if not applied:
                where = f"epoch {self.epoch}, step {self.step}"
                if not self.cfg["skip_nonfinite"]:
                    self.save()
                    raise Error(f"non-finite cost or gradient at {where}; the update was not "
                                f"applied and the last good state is in {self.folder} "
                                f"(skip_nonfinite=True skips such steps instead)")
                self.skipped += 1
                print(f"warning: skipped a non-finite step at {where} ({self.skipped} so far)")
            else:
                self.cost_sum += float(cost.sum())
            self.step += 1
            progress.update(start + len(cost), self.cost_sum / (start + len(cost)))
            if self.stop_signal is not None:
                self.save()
                print(f"Stopped by {self.stop_signal} at epoch {self.epoch}, step {self.step}; "
                      f"checkpoint saved. Resume with:\n  python train.py with resume={self.folder}")
                return False
            if time.time() - self.last_checkpoint > 60 * self.cfg["checkpoint_minutes"]:
                self.save()
        return True

    def report(self, dt, train_cost):
        cfg, folder = self.cfg, self.folder
        results = evaluate_set(self.model, self.test_x, cfg["n_batch"])
        if not math.isfinite(results["cost"]):
            raise Error(f"the test cost is {results['cost']} after epoch {self.epoch}; the "
                        f"last checkpoint in {folder} holds the state before this epoch")
        self.history["test"].append([self.epoch, results["cost"]])
        weights = self.model.get_weights()
        save_ndict(weights, os.path.join(folder, "weights.ndict.tar.gz"))
        if self.best is None or results["cost"] < self.best:
            self.best = results["cost"]
            if cfg["save_model"]:
                save_ndict(weights, os.path.join(folder, "weights_best.ndict.tar.gz"))
        append_results(folder, self.epoch, results)
        write_samples(self.model, folder, self.epoch, self.eps_fixed, self.noise_rng)
        curves = [np.array(self.history[k], dtype=float).reshape(-1, 2).T for k in ("train", "test")]
        plot_learning_curves(os.path.join(folder, "learning_curve.png"), *curves[0], *curves[1])
        if self.epoch == 0:
            print("logdir: t: Epoch: Train cost: Valid cost: Best: log(stdev) of p(x|z):")
        logsd = float(self.model.avg_params["logsd_x"].get_value()) \
            if "logsd_x" in self.model.avg_params else 0.0
        print(f"{os.path.basename(folder)} {dt:.2f} {self.epoch} {train_cost:.5f} "
              f"{results['cost']:.5f} {self.best:.5f} {logsd}", flush=True)


@contextlib.contextmanager
def stop_on_signals(run):
    """SIGINT/SIGTERM: finish the minibatch, checkpoint, and exit cleanly."""
    def handler(signum, _frame):
        if run.stop_signal is not None:  # a second signal: stop now, without a checkpoint
            raise KeyboardInterrupt
        run.stop_signal = signal.Signals(signum).name
        print(f"{run.stop_signal}: stopping after this minibatch (again to stop at once)")
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def user_errors():
    """Turn the errors a user can fix (bad data, config, weights) into one-line messages."""
    try:
        yield
    except USER_ERRORS as err:
        raise Error(str(err)) from None


def config_differences(saved, current, keys):
    """``key: saved -> given`` for each user-set key whose value differs from the saved run."""
    def lookup(cfg, dotted):
        for part in dotted.split("."):
            cfg = cfg.get(part) if isinstance(cfg, dict) else None
        return cfg
    normal = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples vs lists)
    return [f"{k}: {lookup(saved, k)!r} -> {lookup(current, k)!r}" for k in sorted(keys)
            if normal(lookup(saved, k)) != normal(lookup(current, k))]


def resume_run(folder, cfg, modified):
    arrays, meta = load_checkpoint(folder)
    if "config" not in meta:
        raise CheckpointError(f"the checkpoint in {folder} has no saved config")
    user_set = {k for k in modified if k.split(".")[0] not in ("resume", "seed", "n_epochs")}
    differences = config_differences(meta["config"], cfg, user_set)
    if differences:
        raise Error(f"the config contradicts the run in {folder}: {'; '.join(differences)}")
    saved = dict(meta["config"], resume=folder)
    if "n_epochs" in modified:  # the one setting a resumed run may change: when to stop
        saved["n_epochs"] = cfg["n_epochs"]
    run = Run(saved, folder)
    try:
        run.restore(arrays, meta)
    except KeyError as err:
        raise CheckpointError(f"the checkpoint in {folder} lacks {err}: written by another "
                              f"version of this code?") from None
    print(f"Resuming {folder} at epoch {run.epoch}, step {run.step}")
    return run


@ex.main
def train(_config, _run):
    """Train, reporting test bits/dim, weights and samples into a run folder."""
    with user_errors():
        cfg = json.loads(json.dumps(_config))
        if cfg["resume"] and not os.path.isdir(cfg["resume"]):
            raise Error(f"resume={cfg['resume']}: no such run folder")
        if cfg["resume"]:
            sys.stdout = Tee(sys.stdout, os.path.join(cfg["resume"], "log.txt"))
            run = resume_run(cfg["resume"], cfg, _run.config_modifications.modified)
        else:
            folder = make_run_folder()
            sys.stdout = Tee(sys.stdout, os.path.join(folder, "log.txt"))
            with open(os.path.join(folder, "command.sh"), "w") as f:
                f.write(" ".join(shlex.quote(a) for a in ["python"] + sys.argv) + "\n")
            print(f"Run folder: {folder}")
            run = Run(cfg, folder)
        with stop_on_signals(run):
            if not cfg["resume"]:
                run.start()  # a signal during its compile stops the run at the first step
                if cfg["est_marglik"] > 0:
                    data = run.test_x if cfg["est_marglik_data"] == "valid" else run.train_x
                    return estimate_marglik(run.model, data, cfg["n_batch"],
                                            cfg["est_marglik"], cfg["shape_x"])
            print("Training (the first minibatch compiles the training step)")
            run.train()
        return run.best


@ex.command
def evaluate(_config):
    """Test bits/dim of saved weights; the last line is JSON for scripts."""
    with user_errors():
        cfg = json.loads(json.dumps(_config))
        if cfg["load_model_path"] is None:
            raise Error("evaluate needs load_model_path=DIR, a folder with weights.ndict.tar.gz")
        train_x, test_x = get_data(cfg)
        data = test_x if cfg["est_marglik_data"] == "valid" else train_x
        model = build_model(cfg)
        initialise(model, train_x[:cfg["n_batch"]], cfg)
        results = evaluate_set(model, data, cfg["n_batch"])
        summary = {"cost": results["cost"], "elbo": results["elbo"], "n_images": len(data)}
        print(f"cost (the original's bits/dim, free bits applied): {results['cost']:.5f}")
        print(f"-ELBO (bits/dim): {results['elbo']:.5f}")
        if cfg["est_marglik"] > 0:
            summary["marglik"] = estimate_marglik(model, data, cfg["n_batch"],
                                                  cfg["est_marglik"], cfg["shape_x"])
            summary["est_marglik"] = cfg["est_marglik"]
        print(json.dumps(summary))
        return summary


@ex.command(unobserved=True)
def print_params(_config):
    """Every parameter as ``name shape``, then the total count; compiles nothing."""
    with user_errors():
        model = build_model(_config)
    total = 0
    for name, var in sorted(model.params.items()):
        shape = var.get_value(borrow=True).shape
        total += int(np.prod(shape))
        print(name, shape)
    print(f"total {total}")


if __name__ == "__main__":
    ex.run_commandline()
