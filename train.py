"""Train the IAF ResNet VAE and report bits/dim: a sacred experiment.

    python train.py with problem=cifar10 n_h=160 depths=[10,10] margs.depth_ar=2 \\
        margs.posterior=down_iaf2_nl margs.prior=diag margs.kl_min=0.25
    python train.py with quickstart                 # a one-minute run on toy images
    python train.py with resume=runs/<run>          # continue a stopped run exactly
    python train.py evaluate with load_model_path=runs/<run> [est_marglik=K]
    python train.py print_params with table3

The loop (docs/model.md §10, §11): data-dependent init, then epochs of AdaMax steps;
after epochs 0..10 and every ``n_reporting`` epochs, evaluate the Polyak-averaged weights
on the test set and write weights, samples, results and the learning curve.
"""
import contextlib
import dataclasses
import difflib
import json
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from sacred import Experiment
from sacred.initialize import create_run
from sacred.utils import SacredError

from configs import NAMED_CONFIGS
from data import DataError, load_dataset
from data.files import atomic_write
from data.pictures import save_image_grid
from data.plot import save_learning_curve
from models import ConfigError, ModelConfig, ResNetVAE, WeightsError, load_ndict, save_ndict
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.config import default_options, option_names
from models.noise import permutation
from models.optim import COST, FREE_SLOTS
from models.parallel import ParallelError, Processes

ex = Experiment("iaf", save_git_info=False)
for _name, _updates in NAMED_CONFIGS.items():
    ex.add_named_config(_name, _updates)


# Model options the original also takes at the top level (n_h sets n_h1 and n_h2);
# their defaults are ModelConfig's, and margs is derived from them.
MODEL_DEFAULTS = default_options()
MODEL_SHORTCUTS = ("px", "pad_x", "shape_x", "n_z", "n_h1", "n_h2", "depths")


@ex.config
def config():
    problem = "cifar10"  # 'cifar10' (from $CIFAR10_PATH) or 'toy' (generated, no download)
    n_batch = 16  # minibatch size
    n_reporting = 10  # epochs between reports (after epochs 0..10)
    n_epochs = 0  # stop after this many epochs; 0 = never, as the original
    px = MODEL_DEFAULTS["px"]
    pad_x = MODEL_DEFAULTS["pad_x"]
    shape_x = MODEL_DEFAULTS["shape_x"]
    n_h = MODEL_DEFAULTS["n_h1"]
    n_z = MODEL_DEFAULTS["n_z"]
    n_h1 = n_h
    n_h2 = n_h
    n_train = 0  # > 0: use only the first n_train training AND test images
    model_type = "cvae1"
    depths = MODEL_DEFAULTS["depths"]
    # The model's options (models/config.py), from the values above; margs.KEY=... sets one.
    margs = default_options(px=px, pad_x=pad_x, shape_x=shape_x, n_z=n_z, n_h1=n_h1,
                            n_h2=n_h2, depths=depths)
    save_model = True  # also keep weights_best.ndict.tar.gz
    load_model_path = None  # a folder holding weights.ndict.tar.gz to start from
    load_model_complete = True  # False: tolerate parameters missing from that file
    est_marglik = 0  # K > 0: importance-sampled log-likelihood with K samples, then stop
    est_marglik_data = "valid"  # ... on 'valid' (the test set) or 'train'
    resume = None  # a run folder: continue that run exactly where its checkpoint left it
    checkpoint_minutes = 5.0  # also checkpoint this often within an epoch (wall time)
    skip_nonfinite = False  # True: skip (and count) steps with a NaN/inf cost or gradient
    n_samples = 100  # sample: how many images
    temperature = 1.0  # sample, reconstruct: scale of the prior's noise (docs/model.md §6)
    n_images = 10  # reconstruct: how many test images


try:  # this process and, under mpiexec, the others of the run (models/parallel.py)
    processes = Processes()
except ParallelError as _error:
    sys.exit(f"ERROR - {_error}")


class Error(SacredError):
    """A user-facing error: one sentence, no traceback."""

    def __init__(self, message):
        super().__init__(message, print_traceback=False)


Error.__module__ = "train"  # sacred names the exception's module: not "__main__"


@contextlib.contextmanager
def user_errors():
    """Turn the errors a user can fix (bad data, config, weights) into one-line messages."""
    try:
        yield
    except (DataError, ConfigError, WeightsError, CheckpointError, ParallelError,
            OSError) as err:  # OSError: a folder that cannot be written, a full disk
        raise Error(str(err)) from None


def _check_keys(keys, valid, prefix=""):
    for key in keys:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else \
                f"valid keys: {', '.join(prefix + v for v in valid)}"
            raise Error(f"unknown config key {prefix + key!r}; {hint}")


@ex.config_hook
def reject_unknown_keys(config, command_name, logger):
    """Sacred refuses a misspelled key with a traceback; say which key was meant."""
    _check_keys(config, list(ex.configurations[0]()) + ["seed"])
    _check_keys(config.get("margs", {}), option_names(), prefix="margs.")
    return {}


def resolved_config(*named_configs, **updates):
    """The config ``python train.py with <named_configs> <key=value ...>`` runs with."""
    return create_run(ex, "train", updates, named_configs).config


# -- data, model, noise -----------------------------------------------------------------
def get_data(cfg):
    for key in ("n_batch", "n_reporting"):
        if int(cfg[key]) < 1:
            raise Error(f"{key}={cfg[key]} must be a positive integer")
    train_x, test_x = load_dataset(cfg["problem"], cfg["n_train"], seed=cfg["seed"])
    if cfg["n_batch"] > len(train_x):
        raise Error(f"n_batch={cfg['n_batch']} is larger than the {len(train_x)} training "
                    f"images; use a smaller n_batch or a larger n_train")
    shape = tuple(cfg["margs"]["shape_x"])
    if train_x.shape[1:] != shape:
        raise Error(f"problem {cfg['problem']!r} has images of shape {train_x.shape[1:]}, "
                    f"but the model's shape_x is {shape}")
    for name, images in (("training", train_x), ("test", test_x)):
        processes.check_identical(images, f"{name} images", "is CIFAR10_PATH the same "
                                  "data set on every machine?")
    return train_x, test_x


def build_model(cfg, draw_weights=True):
    if cfg["model_type"] != "cvae1":
        raise Error(f"unknown model_type {cfg['model_type']!r}; valid choices: cvae1")
    try:
        config = ModelConfig(**cfg["margs"])
    except TypeError as err:  # e.g. options saved by another version of this code
        raise Error(f"margs do not fit this version's model options ({err})") from None
    return ResNetVAE(config, seed=cfg["seed"], draw_weights=draw_weights)


# The config entries that define the model; a run saves its config (config.json), and
# commands that inspect a run also take the data it was evaluated on from it.
MODEL_KEYS = ("model_type", "n_h", "margs") + MODEL_SHORTCUTS
DATA_KEYS = ("problem", "n_train", "n_batch", "seed")


def command_config(config, sacred_run, saved_keys=MODEL_KEYS):
    """The command's config as plain data, rank 0's on every rank (sacred draws a seed in
    each process). If ``load_model_path`` is a run folder of this project, its saved
    ``saved_keys`` replace the defaults; given values that contradict saved model options
    are refused."""
    cfg = json.loads(json.dumps(config))
    path = cfg["load_model_path"] and os.path.join(cfg["load_model_path"], "config.json")
    if processes.is_main and path and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        modified = sacred_run.config_modifications.modified
        given = {k for k in modified if k.split(".")[0] in MODEL_KEYS}
        differences = config_differences(saved, cfg, given)
        if differences:
            raise Error(f"the model options contradict those saved with the run in "
                        f"{cfg['load_model_path']}: {'; '.join(differences)}")
        cfg.update({k: saved[k] for k in saved_keys if k in saved and k not in modified})
    return processes.broadcast(cfg)


def initialise(model, cfg, init_x=None):
    """Data-dependent init on ``init_x``, or weights from ``load_model_path`` (or both if
    incomplete), on rank 0, which then sends the parameters to the other ranks."""
    path, complete = cfg["load_model_path"], cfg["load_model_complete"]
    if (path is None or not complete) and init_x is None:
        raise Error("this command needs load_model_path=DIR and load_model_complete=True")
    if processes.is_main and (path is None or not complete):
        eps = model.noise("init", 0, range(len(init_x)))
        for name in model.data_init(init_x, eps):
            print(f"warning: a channel of {name} has std 0 on the init batch; "
                  f"skipped its data-dependent init")
    if processes.is_main and path is not None:
        path = os.path.join(path, "weights.ndict.tar.gz")
        print(f"Loading weights from {path}")
        missing = model.set_weights(load_ndict(path), complete=complete, source=path)
        if missing:
            print(f"warning: {len(missing)} parameters not in the file kept their init")
    for parameters in (model.params, model.avg_params):
        processes.broadcast_(parameters.buffer)


def minibatches(n_images, n_batch):
    return [(start, min(start + n_batch, n_images)) for start in range(0, n_images, n_batch)]


def my_minibatches(model, x, n_batch, purpose, sample=0):
    """``(images, noise)`` of this rank's share of the minibatches of ``x``. An image's
    noise is keyed by its index in ``x`` (and by ``sample``, for several draws), so the
    same weights give the same numbers for any ``n_batch`` and any number of ranks."""
    batches = minibatches(len(x), n_batch)
    for b in processes.share(range(len(batches))):
        start, stop = batches[b]
        yield x[start:stop], model.noise(purpose, sample, range(start, stop))


def evaluate_images(model, x, n_batch, purpose="eval", sample=0):
    """Every evaluation output for every image of ``x``, in image order, on every rank."""
    mine = [model.evaluate(*batch) for batch in
            my_minibatches(model, x, n_batch, purpose, sample)]
    results = [r for share in processes.gather(mine) for r in share]
    return {key: np.concatenate([r[key] for r in results]) for key in results[0]}


def evaluate_set(model, x, n_batch):
    """Mean of every evaluation output over the images of ``x`` (in float64, image order)."""
    return {key: float(values.astype(np.float64).mean())
            for key, values in evaluate_images(model, x, n_batch).items()}


def estimate_marglik(model, x, n_batch, n_samples):
    """Importance-sampled ``-log p(x)`` in bits/dim: log-mean-exp over K posterior samples
    of ``log p(x|z) + log p(z) - log q(z|x)`` per image (free bits never enter it)."""
    log_sum = -np.inf  # per image, log of the sum of the importance weights so far
    for k in range(n_samples):
        log_w = evaluate_images(model, x, n_batch, "marglik", k)["log_weight"]
        log_sum = np.logaddexp(log_sum, log_w.astype(np.float64))
        bits = -(log_sum - np.log(k + 1)).mean() * model.bits_per_nat
        print(f"Estimate of -log p(x) after {k + 1} samples: {bits:.5f} bits/dim")
    return bits


# -- the run ----------------------------------------------------------------------------
@dataclass
class LoopState:
    """Everything the training loop carries from step to step; a checkpoint saves and
    restores it whole. Minibatch order and noise are functions of the seed and of these
    counters (docs/model.md §9), so no random generator state is kept."""
    epoch: int = 0  # the epoch under way
    images_done: int = 0  # images of this epoch's order trained on so far
    steps: int = 0  # training steps taken since the run began (the metrics' step)
    cost_sum: float = 0.0  # their summed training cost
    skipped: int = 0  # non-finite steps skipped (skip_nonfinite=True)
    best: Optional[float] = None  # best test cost so far
    history: dict = field(default_factory=lambda: {"train": [], "test": [], "kl": []})


class Progress:
    """A line every ``every`` seconds within an epoch: images/s, running bits/dim, ETA.
    The rate is measured from the first step on, which compiled the training function."""

    def __init__(self, n_images, every=30.0):
        self.n_images, self.every = n_images, every
        self.start = None

    def update(self, done, running_cost):
        now = time.time()
        if self.start is None:
            self.start, self.last, self.done_at_start = now, now, done
            return
        if now - self.last < self.every or done >= self.n_images:
            return
        self.last = now
        rate = (done - self.done_at_start) / (now - self.start)
        eta = (self.n_images - done) / rate
        print(f"  {done}/{self.n_images} images, {rate:.1f} images/s, "
              f"train {running_cost:.4f} bits/dim, epoch ETA {eta / 60:.1f} min", flush=True)


# The flat gradient's free slots: the ranks' flags, summed with it in the step's one
# all-reduce (docs/model.md §11).
STOP, CHECKPOINT = FREE_SLOTS
# train.running_cost goes to sacred's observers this often per epoch (at every tenth of
# it), so that a days-long run logs a number of values that grows with epochs, not steps.
RUNNING_COST_LOGS_PER_EPOCH = 10


class Run:
    """A training run: config, run folder, data, model and loop state; sacred's ``_run``
    receives the metrics. Under mpiexec every rank holds one, rank 0 writes the files."""

    def __init__(self, cfg, folder, sacred_run, state=None):
        self.cfg, self.folder, self.sacred_run = cfg, folder, sacred_run
        self.train_x, self.test_x = get_data(cfg)
        self.model = build_model(cfg)
        self.state = state or LoopState()
        self.stop_signal = None
        self.last_checkpoint = time.time()

    def check_ranks_agree(self):
        """Stop with an error if the ranks' parameters differ (a checksum compared), before
        anything is written from them."""
        processes.check_identical(self.model.params.buffer, "parameters", "the ranks no "
                                  "longer train one model (a faulty machine or MPI library?): "
                                  "resume from the last checkpoint")

    def save(self):
        """Checkpoint, once every rank is seen to hold the same parameters."""
        self.check_ranks_agree()
        if processes.is_main:
            meta = {"config": self.cfg, "loop": dataclasses.asdict(self.state)}
            save_checkpoint(self.folder, self.model.training_state(), meta)
        processes.broadcast(None)  # no rank goes on, or ends, before it is written
        self.last_checkpoint = time.time()

    def train(self):
        """Epochs until ``n_epochs`` (or forever); False if stopped by a signal."""
        cfg, state = self.cfg, self.state
        while cfg["n_epochs"] <= 0 or state.epoch < cfg["n_epochs"]:
            t0 = time.time()
            if not self.train_epoch():
                return False
            train_cost = state.cost_sum / len(self.train_x)
            state.history["train"].append([state.epoch, train_cost])
            self.sacred_run.log_scalar("train.cost", train_cost, state.epoch)
            if state.epoch <= 10 or state.epoch % cfg["n_reporting"] == 0:
                self.report(time.time() - t0, train_cost)
            state.epoch, state.images_done, state.cost_sum = state.epoch + 1, 0, 0.0
            self.save()
        return True

    def step(self, order, positions):
        """One step on the global minibatch at ``positions`` of the epoch's ``order``: each
        rank's gradient of its share, summed over ranks, then the same update everywhere.
        Returns the summed flat vector (gradient, cost, flags) and whether it was applied."""
        model, mine = self.model, processes.share(positions)
        if len(mine):
            flat = model.gradient(self.train_x[order[mine]],
                                  model.noise("train", self.state.epoch, mine))[1]
        else:  # a last global minibatch smaller than the number of ranks
            flat = np.zeros(model.optimiser.gradient_size, np.float32)
        flat[STOP] = self.stop_signal is not None
        flat[CHECKPOINT] = processes.is_main and \
            time.time() - self.last_checkpoint > 60 * self.cfg["checkpoint_minutes"]
        processes.sum_(flat)
        return flat, model.apply_gradient(flat)

    def train_epoch(self):
        """The rest of the current epoch's minibatches; False if stopped by a signal."""
        cfg, state = self.cfg, self.state
        order = permutation(cfg["seed"], state.epoch, len(self.train_x))
        progress = Progress(len(order))
        while state.images_done < len(order):
            start = state.images_done
            positions = np.arange(start, min(start + cfg["n_batch"] * processes.size,
                                             len(order)))
            flat, applied = self.step(order, positions)
            if not applied:
                self.non_finite_step()
            else:
                state.cost_sum += float(flat[COST])
            state.images_done, state.steps = int(positions[-1]) + 1, state.steps + 1
            running = state.cost_sum / state.images_done
            progress.update(state.images_done, running)
            points = [RUNNING_COST_LOGS_PER_EPOCH * done // len(order)
                      for done in (start, state.images_done)]
            if points[1] > points[0]:  # this step passed one of the epoch's logging points
                self.sacred_run.log_scalar("train.running_cost", running, state.steps)
            if flat[STOP]:
                self.save()
                print(f"Stopped by {self.stop_signal or 'a signal to another rank'} at epoch "
                      f"{state.epoch}, image {state.images_done}; checkpoint saved. Resume "
                      f"with:\n  python train.py with resume={self.folder}")
                return False
            if flat[CHECKPOINT]:
                self.save()
        return True

    def non_finite_step(self):
        where = f"epoch {self.state.epoch}, image {self.state.images_done}"
        if not self.cfg["skip_nonfinite"]:
            self.save()
            raise Error(f"non-finite cost or gradient at {where}; the update was not "
                        f"applied and the last good state is in {self.folder} "
                        f"(skip_nonfinite=True skips such steps instead)")
        self.state.skipped += 1
        print(f"warning: skipped a non-finite step at {where} ({self.state.skipped} so far)")

    def report(self, dt, train_cost):
        """Test cost, weights, samples, results line, learning curve and metrics."""
        cfg, folder, state, model = self.cfg, self.folder, self.state, self.model
        results = evaluate_set(model, self.test_x, cfg["n_batch"])
        if not math.isfinite(results["cost"]):
            raise Error(f"the test cost is {results['cost']} after epoch {state.epoch}; the "
                        f"last checkpoint in {folder} holds the state before this epoch")
        kl = {k[len("cost_z"):]: v for k, v in results.items() if k.startswith("cost_z")}
        state.history["test"].append([state.epoch, results["cost"]])
        state.history["kl"].append([state.epoch, kl])
        is_best = state.best is None or results["cost"] < state.best
        state.best = results["cost"] if is_best else state.best
        self.check_ranks_agree()
        weights = model.get_weights()
        logsd = float(weights.get("logsd_x", 0.0))
        for name, value in [("test.cost", results["cost"]), ("test.elbo", results["elbo"]),
                            ("logsd_x", logsd)] + [(f"test.kl.{k}", v) for k, v in kl.items()]:
            self.sacred_run.log_scalar(name, value, state.epoch)
        if not processes.is_main:
            return
        save_ndict(weights, os.path.join(folder, "weights.ndict.tar.gz"))
        if is_best and cfg["save_model"]:
            save_ndict(weights, os.path.join(folder, "weights_best.ndict.tar.gz"))
        append_results(folder, state.epoch, results)
        write_samples(model, folder, state.epoch)
        kl_floor = model.config.kl_min * model.config.n_z
        save_learning_curve(os.path.join(folder, "learning_curve.png"), state.history,
                            kl_floor=kl_floor or None)
        if state.epoch == 0:
            print("logdir: t: Epoch: Train cost: Valid cost: Best: log(stdev) of p(x|z):")
        print(f"{os.path.basename(folder)} {dt:.2f} {state.epoch} {train_cost:.5f} "
              f"{results['cost']:.5f} {state.best:.5f} {logsd}", flush=True)


def write_samples(model, folder, epoch):
    """100 samples from fresh noise and 100 from the run's fixed noise, as 10x10 grids."""
    for name, noise in ((f"sample_{epoch}.png", ("sample", epoch)),
                        (f"sample_fixed1_{epoch}.png", ("sample_fixed", 0))):
        save_image_grid(os.path.join(folder, name), model.decode(model.noise(*noise, range(100))))


RESULTS = "results.txt"  # the original's table of reports, a line per report


def append_results(folder, epoch, results):
    """Add the report's line to results.txt (the header first, in a new file)."""
    lines = read_results(folder) or ["Epoch " + " ".join(results) + "\n"]
    lines.append(f"{epoch} " + " ".join(repr(v) for v in results.values()) + "\n")
    write_results(folder, lines)


def trim_results(folder, reported_epochs):
    """Keep in results.txt only the reports a checkpoint knows of: a run killed between
    a report and the next checkpoint repeats that report when resumed."""
    lines = read_results(folder)
    if lines:
        header, *reports = lines
        write_results(folder, [header] + [line for line in reports
                                          if int(line.split()[0]) in reported_epochs])


def read_results(folder):
    """The lines of results.txt, or [] if there is none yet."""
    path = os.path.join(folder, RESULTS)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.readlines()


def write_results(folder, lines):
    """Rewrite results.txt whole: a failed write (a full disk) leaves it as it was, never
    half a line."""
    atomic_write(os.path.join(folder, RESULTS), lambda f: f.write("".join(lines).encode()))


class Tee:
    """Write console output to a log file too; if the log cannot be written (a full disk),
    say so once and go on with the console alone."""

    def __init__(self, stream, path):
        self.stream, self.path, self.file = stream, path, open(path, "a", buffering=1)

    def write(self, text):
        self.stream.write(text)
        self._to_file(self.file.write, text)

    def flush(self):
        self.stream.flush()
        self._to_file(self.file.flush)

    def _to_file(self, method, *args):
        if self.file.closed:
            return
        try:
            method(*args)
        except OSError as err:
            with contextlib.suppress(OSError):
                self.file.close()
            self.stream.write(f"warning: stopped logging to {self.path} ({err.strerror})\n")

    def __getattr__(self, name):
        return getattr(self.stream, name)


def make_run_folder():
    """``$ML_LOG_PATH/<time>/`` as the original, else ``./runs/<time>/``."""
    root = os.environ.get("ML_LOG_PATH") or "runs"
    path = os.path.join(root, time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    os.makedirs(path)
    return path


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


def config_differences(saved, current, keys):
    """``key: saved -> given`` for each user-set key whose value differs from the saved run."""
    def lookup(cfg, dotted):
        for part in dotted.split("."):
            cfg = cfg.get(part) if isinstance(cfg, dict) else None
        return cfg
    normal = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples vs lists)
    return [f"{k}: {lookup(saved, k)!r} -> {lookup(current, k)!r}" for k in sorted(keys)
            if normal(lookup(saved, k)) != normal(lookup(current, k))]


# What a resumed run may change: when to stop, how to treat a NaN, how often to checkpoint.
MAY_CHANGE = ("n_epochs", "skip_nonfinite", "checkpoint_minutes")


def resume_run(folder, cfg, sacred_run):
    """The run in ``folder`` as its checkpoint left it. Rank 0 reads the checkpoint and
    sends it to the others, which may run on machines without the folder."""
    arrays, meta = load_checkpoint(folder) if processes.is_main else (None, None)
    meta = processes.broadcast(meta)
    modified = sacred_run.config_modifications.modified
    user_set = {k for k in modified if k.split(".")[0] not in ("resume", "seed") + MAY_CHANGE}
    differences = config_differences(meta["config"], cfg, user_set)
    if differences:
        raise Error(f"the config contradicts the run in {folder}: {'; '.join(differences)}")
    saved = dict(meta["config"], resume=folder)
    saved.update({k: cfg[k] for k in MAY_CHANGE if k in modified})
    run = Run(saved, folder, sacred_run, LoopState(**meta["loop"]))
    if processes.is_main:
        try:
            run.model.set_training_state(arrays)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"the checkpoint in {folder} does not fit its own config's "
                                  f"model ({err}): a damaged file?") from None
    state = run.model.training_state()  # rank 0's, sent to the others
    for name in sorted(state):
        processes.broadcast_(state[name])
    if not processes.is_main:
        run.model.set_training_state(state)
    if processes.is_main:
        trim_results(folder, {epoch for epoch, _ in run.state.history["test"]})
    print(f"Resuming {folder} at epoch {run.state.epoch}, image {run.state.images_done}")
    return run


def open_run_folder(cfg):
    """The run folder, new or resumed (created, and logged to, by rank 0 only)."""
    folder = cfg["resume"]
    if processes.is_main:
        if folder and not os.path.isdir(folder):
            raise Error(f"resume={folder}: no such run folder")
        folder = folder or make_run_folder()
        sys.stdout = Tee(sys.stdout, os.path.join(folder, "log.txt"))
        if not cfg["resume"]:
            with open(os.path.join(folder, "command.sh"), "w") as f:
                f.write(" ".join(shlex.quote(a) for a in ["python"] + sys.argv) + "\n")
            atomic_write(os.path.join(folder, "config.json"),
                         lambda f: f.write(json.dumps(cfg, indent=1).encode()))
            print(f"Run folder: {folder}")
    return processes.broadcast(folder)


@ex.main
def train(_config, _run):
    """Train, reporting test bits/dim, weights and samples into a run folder."""
    with user_errors():
        cfg = command_config(_config, _run)
        folder = open_run_folder(cfg)
        run = resume_run(folder, cfg, _run) if cfg["resume"] else Run(cfg, folder, _run)
        if processes.size > 1:
            print(f"{processes.size} processes, global minibatch "
                  f"{processes.size * cfg['n_batch']} ({cfg['n_batch']} per process)")
        with stop_on_signals(run):
            if not cfg["resume"]:
                initialise(run.model, cfg, run.train_x[:cfg["n_batch"]])
                if cfg["est_marglik"] > 0:  # the original's way to evaluate saved weights
                    return evaluate_model(run.model, cfg, run.train_x, run.test_x)
            print("Training (the first minibatch compiles the training step)")
            try:
                run.train()
            except OSError as err:  # a full disk: the failed write changed nothing
                raise Error(f"{err}; the run stopped and its last checkpoint is intact: make "
                            f"room, then continue with python train.py with resume={folder}")
        return run.state.best


def trained_model(config, sacred_run):
    """The config and the model with the weights of ``load_model_path``, for a command
    that inspects it (on the data the run used, unless told otherwise)."""
    cfg = command_config(config, sacred_run, MODEL_KEYS + DATA_KEYS)
    if cfg["load_model_path"] is None:
        raise Error("this command needs load_model_path=DIR, a folder with "
                    "weights.ndict.tar.gz (a run folder of this project, or the original's)")
    return cfg, build_model(cfg, draw_weights=not cfg["load_model_complete"])


def latent_layers(model, x, n_batch, elbo):
    """Per latent layer on images ``x`` (docs/model.md §8): KL in nats per image, its bits
    per dim and share of the -ELBO, the feature maps whose KL is below the free-bits floor,
    and the active units: those whose posterior mean (of q's Gaussian) varies over the
    images with variance above 0.01 (Burda et al. 2015)."""
    shapes = model.latent_shapes()
    sizes = [2 * int(np.prod(s)) + s[0] for s in shapes]  # mean, mean^2, KL per map
    totals = np.zeros(sum(sizes))
    for batch in my_minibatches(model, x, n_batch, "eval"):
        layers = model.latents(*batch)
        totals += np.concatenate([part.sum(axis=0) for mean, kl in layers for part in
                                  (mean.astype(np.float64), mean.astype(np.float64) ** 2, kl)])
    processes.sum_(totals)
    report, bits = {}, model.bits_per_nat
    for (i, j), (n_z, height, width), part in zip(model.layers, shapes,
                                                   np.split(totals / len(x), np.cumsum(sizes))):
        units = n_z * height * width
        mean, square, kl_maps = np.split(part, [units, 2 * units])
        kl = float(kl_maps.sum())
        report[f"{i:03d}_{j:03d}"] = {
            "kl_nats": kl, "bits_per_dim": kl * bits, "share_of_elbo": kl * bits / elbo,
            "floored_maps": int((kl_maps < model.config.kl_min).sum()), "maps": n_z,
            "active_units": int((square - mean ** 2 > 0.01).sum()), "units": units}
    return report


def print_layers(report):
    print(f"{'layer':8}{'KL (nats/image)':>17}{'bits/dim':>10}{'share of -ELBO':>16}"
          f"{'maps below floor':>18}{'active units':>16}")
    for name, r in report.items():
        print(f"{name:8}{r['kl_nats']:17.3f}{r['bits_per_dim']:10.4f}"
              f"{100 * r['share_of_elbo']:15.1f}%{r['floored_maps']:>13d}/{r['maps']:<4d}"
              f"{r['active_units']:>10d}/{r['units']:<5d}")


def evaluate_model(model, cfg, train_x, test_x):
    """Bits/dim of the model on ``est_marglik_data``'s images, what each latent layer
    carries and, with ``est_marglik=K``, the importance-sampled -log p(x); the last line
    printed is JSON for scripts."""
    data = test_x if cfg["est_marglik_data"] == "valid" else train_x
    results = evaluate_set(model, data, cfg["n_batch"])
    summary = {"cost": results["cost"], "elbo": results["elbo"], "n_images": len(data)}
    print(f"cost (the original's bits/dim, free bits applied): {results['cost']:.5f}")
    print(f"-ELBO (bits/dim): {results['elbo']:.5f}")
    summary["layers"] = latent_layers(model, data, cfg["n_batch"], results["elbo"])
    print_layers(summary["layers"])
    if cfg["est_marglik"] > 0:
        summary["marglik"] = estimate_marglik(model, data, cfg["n_batch"], cfg["est_marglik"])
        summary["est_marglik"] = cfg["est_marglik"]
    print(json.dumps(summary))
    return summary


@ex.command
def evaluate(_config, _run):
    """Test bits/dim of saved weights, and what each latent layer carries."""
    with user_errors():
        cfg, model = trained_model(_config, _run)
        train_x, test_x = get_data(cfg)
        initialise(model, cfg, train_x[:cfg["n_batch"]])
        return evaluate_model(model, cfg, train_x, test_x)


def save_images(folder, name, images, n_cols):
    """``name``.png (a grid) and ``name``.npy (the uint8 images) in ``folder``, by rank 0."""
    if processes.is_main:
        save_image_grid(os.path.join(folder, name + ".png"), images, n_cols)
        atomic_write(os.path.join(folder, name + ".npy"), lambda f: np.save(f, images))
        print(f"Wrote {name}.png and {name}.npy to {folder}")


@ex.command
def sample(_config, _run):
    """``n_samples`` images from the prior at ``temperature``, into a new run folder."""
    with user_errors():
        cfg, model = trained_model(_config, _run)
        initialise(model, cfg)
        folder = open_run_folder(cfg)
        noise = model.noise("sample", 0, range(cfg["n_samples"]))
        images = model.decode([cfg["temperature"] * e for e in noise])
        save_images(folder, "samples", images, n_cols=10)


@ex.command
def reconstruct(_config, _run):
    """``n_images`` test images (first row), then one row per latent layer: row k decodes
    the image with z of the top k layers from its posterior and the layers below from
    the prior at ``temperature``; into a new run folder."""
    with user_errors():
        cfg, model = trained_model(_config, _run)
        x = get_data(cfg)[1][:cfg["n_images"]]
        initialise(model, cfg)
        folder = open_run_folder(cfg)
        n_layers, images = len(model.layers), range(len(x))
        eps = model.noise("eval", 0, images)
        prior_eps = [cfg["temperature"] * e for e in model.noise("sample", 0, images)]
        rows = [x] + [model.reconstruct(x, eps, prior_eps,
                                        [k >= n_layers - top for k in range(n_layers)])
                      for top in range(1, n_layers + 1)]
        save_images(folder, "reconstruct", np.concatenate(rows), n_cols=len(x))


@ex.command(unobserved=True)
def print_params(_config):
    """Every parameter as ``name shape``, then the total count; compiles nothing."""
    with user_errors():
        model = build_model(_config)
    for name, shape in sorted(model.params.shapes.items()):
        print(name, shape)
    print(f"total {model.params.size}")


def main(argv):
    """Sacred's command line, on every rank; only rank 0 prints, logs and is observed."""
    if not processes.is_main:
        argv = argv + ["--unobserved", "--loglevel=ERROR"]
        sys.stdout = open(os.devnull, "w")
    try:
        ex.run_commandline(argv)
    except BaseException as end:  # an error (SystemExit(1)) or a second Ctrl-C
        if processes.size > 1 and not (isinstance(end, SystemExit) and not end.code):
            # The other ranks may be waiting for this one, so abort them all. mpiexec
            # forwards output asynchronously and stops forwarding at an abort: give rank
            # 0's message a second to get out, and other ranks wait longer so that rank
            # 0, if it failed too, says why first.
            sys.stderr.flush()
            time.sleep(1 if processes.is_main else 2)
            processes.abort(1)
        raise


if __name__ == "__main__":
    main(sys.argv)
