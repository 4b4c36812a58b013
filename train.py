"""Train the IAF ResNet VAE and report bits/dim: a sacred experiment.

    python train.py with problem=cifar10 n_h=160 depths=[10,10] margs.depth_ar=2 \\
        margs.posterior=down_iaf2_nl margs.prior=diag margs.kl_min=0.25
    python train.py with quickstart                 # a small run on toy images
    python train.py with resume=runs/<run>          # continue a stopped run exactly
    python train.py evaluate with load_model_path=runs/<run> [est_marglik=K]
    python train.py print_params with table3

The loop (docs/model.md §10, §11): data-dependent init, then epochs of AdaMax steps;
after epochs 0..10 and every ``n_reporting`` epochs, evaluate the Polyak-averaged weights
on the test set and write weights, samples, results and the learning curve.
"""
import contextlib
import copy
import os
import sys
import time

import numpy as np
from sacred import Experiment
from sacred.config.config_dict import ConfigDict
from sacred.initialize import create_run
from sacred.utils import SacredError

from configs import NAMED_CONFIGS
from data import DataError
from models.config import ConfigError
from models.noise import permutation
from models.run import inspection
from models.run.checkpoint import CheckpointError
from models.run.folder import FolderInUse, open_folder
from models.run.report import Progress, ReportError, report, stop_on_signals
from models.run.resume import LoopState, restore_training_state, save_run, saved_run
from models.run.settings import (FROM_RUN, RunConfig, check_known, command_settings,
                                 keys_of, option_docs, sacred_defaults,
                                 with_shortcuts_resolved)
from models.run.step import NonFiniteStep, TrainingStep
from models.run.start import build_model, build_trainer, get_data, initialise
from models.run.processes import ParallelError, Processes
from models.run.weights import WeightsError
from models.trainer import check_conv_precision

try:  # this process and, under mpiexec, the others of the run
    processes = Processes()
except ParallelError as _error:
    sys.exit(f"ERROR - {_error}")

ex = Experiment("iaf", save_git_info=False)
for _name, _updates in NAMED_CONFIGS.items():
    ex.add_named_config(_name, _updates)


class DocumentedConfig:
    """Sacred's config from a dict, with each key's meaning for ``print_config``; a fresh
    copy at each use (sacred merges the config hook's values into the dicts it gets)."""

    def __init__(self, values, docs):
        self.values, self.docs = values, docs

    def __call__(self, fixed=None, preset=None, fallback=None):
        summary = ConfigDict(copy.deepcopy(self.values))(fixed, preset, fallback)
        summary.docs.update(self.docs)
        return summary


# Every option, its default and meaning: RunConfig (models/run/settings.py).
ex.configurations.append(DocumentedConfig(sacred_defaults(), option_docs()))


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
    except (DataError, ConfigError, WeightsError, CheckpointError, ParallelError, ReportError,
            FolderInUse, OSError) as err:  # OSError: a folder that cannot be written, a full disk
        raise Error(str(err)) from None


@ex.config_hook
def resolve_options(config, command_name, logger):
    """Refuse a misspelled key (sacred's own message is a traceback), and follow the
    original's shortcuts: ``n_h`` sets ``n_h1`` and ``n_h2``, top-level keys set ``margs``."""
    try:
        check_known(config)
    except ConfigError as err:
        raise Error(str(err)) from None
    return with_shortcuts_resolved(config)


def resolved_config(*named_configs, **updates):
    """The config ``python train.py with <named_configs> <key=value ...>`` runs with."""
    return create_run(ex, "train", updates, named_configs).config


# -- training ---------------------------------------------------------------------------
# train.running_cost goes to sacred's observers this often per epoch (at every tenth of
# it), so that a days-long run logs a number of values that grows with epochs, not steps.
RUNNING_COST_LOGS_PER_EPOCH = 10


@ex.main
def train(_config, _run):
    """Train, reporting test bits/dim, weights and samples into a run folder."""
    with user_errors():
        cfg = command_settings(_config, _run, processes)
        check_conv_precision(cfg.conv_precision)  # before a new run's folder is made
        folder = processes.broadcast(new_or_resumed_folder(cfg) if processes.is_main else None)
        state, arrays = LoopState(), None
        if cfg.resume:
            cfg, state, arrays = saved_run(folder, cfg, _run, processes)
        train_x, test_x = get_data(cfg, processes)
        trainer = build_trainer(cfg)
        if cfg.resume:
            restore_training_state(trainer, arrays, folder, state, processes)
        if processes.size > 1:
            print(f"{processes.size} processes, global minibatch "
                  f"{processes.size * cfg.n_batch} ({cfg.n_batch} per process)")
        with stop_on_signals() as stop:
            if not cfg.resume:
                initialise(trainer, cfg, processes, train_x[:cfg.n_batch])
                if cfg.est_marglik > 0:  # the original's way to evaluate saved weights
                    return evaluate_saved(trainer, cfg, train_x, test_x)
            print("Training (the first minibatch compiles the training step)")
            try:
                training_loop(cfg, folder, state, trainer, train_x, test_x, _run, stop)
            except OSError as err:  # a full disk: the failed write changed nothing
                raise Error(f"{err}; the run stopped and its last checkpoint is intact: make "
                            f"room, then continue with python train.py with resume={folder}")
        return state.best


def new_or_resumed_folder(cfg):
    if cfg.resume and not os.path.isdir(cfg.resume):
        raise Error(f"resume={cfg.resume}: no such run folder")
    return open_folder(cfg.as_dict(), cfg.resume)


def training_loop(cfg, folder, state, trainer, train_x, test_x, sacred_run, stop):
    """Epochs until ``n_epochs`` (or forever), or until a signal (``stop.signal``)."""
    last_checkpoint, first_step = time.time(), state.steps + 1
    train_step = TrainingStep(trainer, processes, cfg.skip_nonfinite)
    while cfg.n_epochs <= 0 or state.epoch < cfg.n_epochs:
        order = permutation(cfg.seed, state.epoch, len(train_x))
        progress, epoch_start = Progress(len(order)), time.time()
        while state.images_done < len(order):
            # This step's global minibatch, this process's share of it, and the step with
            # this process's requests to stop or to checkpoint.
            start = state.images_done
            positions = np.arange(start, min(start + cfg.n_batch * processes.size, len(order)))
            mine = processes.share(positions)
            x, eps = train_x[order[mine]], trainer.noise("train", state.epoch, mine)
            checkpoint_due = time.time() - last_checkpoint > 60 * cfg.checkpoint_minutes
            try:
                step = train_step(x, eps, stop=stop.signal is not None,
                                  checkpoint=processes.is_main and checkpoint_due)
            except NonFiniteStep:
                save_run(folder, cfg, state, trainer, processes)
                raise Error(f"non-finite cost or gradient at epoch {state.epoch}, image "
                            f"{state.images_done}; the update was not applied and the last "
                            f"good state is in {folder} (skip_nonfinite=True skips such "
                            f"steps instead)") from None
            if step.applied:
                state.cost_sum += step.cost
            else:
                state.skipped += 1
                print(f"warning: skipped a non-finite step at epoch {state.epoch}, image "
                      f"{state.images_done} ({state.skipped} so far)")
            # Counters, the progress line and the running cost's metric.
            state.images_done, state.steps = int(positions[-1]) + 1, state.steps + 1
            if state.steps == first_step:  # the convolutions ran: say on what
                print(trainer.convolutions())
            running = state.cost_sum / state.images_done
            progress.update(state.images_done, running)
            if RUNNING_COST_LOGS_PER_EPOCH * state.images_done // len(order) > \
                    RUNNING_COST_LOGS_PER_EPOCH * start // len(order):
                sacred_run.log_scalar("train.running_cost", running, state.steps)
            # Stop, or checkpoint, if any process asked.
            if step.stop:
                save_run(folder, cfg, state, trainer, processes)
                print(f"Stopped by {stop.signal or 'a signal to another rank'} at epoch "
                      f"{state.epoch}, image {state.images_done}; checkpoint saved. Resume "
                      f"with:\n  python train.py with resume={folder}")
                return
            if step.checkpoint:
                save_run(folder, cfg, state, trainer, processes)
                last_checkpoint = time.time()
        # The epoch's end: its training cost, a report, and a checkpoint.
        train_cost = state.cost_sum / len(train_x)
        state.history["train"].append([state.epoch, train_cost])
        sacred_run.log_scalar("train.cost", train_cost, state.epoch)
        if state.epoch <= 10 or state.epoch % cfg.n_reporting == 0:
            report(cfg, folder, state, trainer, test_x, sacred_run, processes,
                   time.time() - epoch_start, train_cost)
        state.epoch, state.images_done, state.cost_sum = state.epoch + 1, 0, 0.0
        save_run(folder, cfg, state, trainer, processes)
        last_checkpoint = time.time()


# -- commands that inspect a trained model ------------------------------------------------
def trained_model(config, sacred_run):
    """The settings and the trainer with the weights of ``load_model_path``, for a command
    that inspects it (on the data the run used, unless told otherwise)."""
    cfg = command_settings(config, sacred_run, processes, keys_of(*FROM_RUN))
    if cfg.load_model_path is None:
        raise Error("this command needs load_model_path=DIR, a folder with "
                    "weights.ndict.tar.gz (a run folder of this project, or the original's)")
    return cfg, build_trainer(cfg, draw_weights=not cfg.load_model_complete)


def evaluate_saved(trainer, cfg, train_x, test_x):
    images = test_x if cfg.est_marglik_data == "valid" else train_x
    return inspection.evaluate_model(trainer, images, cfg.n_batch, cfg.est_marglik, processes)


@ex.command
def evaluate(_config, _run):
    """Test bits/dim of saved weights, and what each latent layer carries."""
    with user_errors():
        cfg, trainer = trained_model(_config, _run)
        train_x, test_x = get_data(cfg, processes)
        initialise(trainer, cfg, processes, train_x[:cfg.n_batch])
        return evaluate_saved(trainer, cfg, train_x, test_x)


def save_images(cfg, name, images, n_cols):
    """Images into a new run folder, by rank 0."""
    if processes.is_main:
        inspection.save_images(open_folder(cfg.as_dict()), name, images, n_cols)


@ex.command
def sample(_config, _run):
    """``n_samples`` images from the prior at ``temperature``, into a new run folder."""
    with user_errors():
        cfg, trainer = trained_model(_config, _run)
        initialise(trainer, cfg, processes)
        save_images(cfg, "samples", inspection.samples(trainer, cfg.n_samples, cfg.temperature),
                    n_cols=10)


@ex.command
def reconstruct(_config, _run):
    """``n_images`` test images (first row), then one row per latent layer: row k decodes
    the image with z of the top k layers from its posterior and the layers below from
    the prior at ``temperature``; into a new run folder."""
    with user_errors():
        cfg, trainer = trained_model(_config, _run)
        x = get_data(cfg, processes)[1][:cfg.n_images]
        initialise(trainer, cfg, processes)
        save_images(cfg, "reconstruct", inspection.reconstructions(trainer, x, cfg.temperature),
                    n_cols=len(x))


@ex.command(unobserved=True)
def print_params(_config):
    """Every parameter as ``name shape``, then the total count; compiles nothing."""
    with user_errors():
        initial = build_model(RunConfig.from_options(_config), draw_weights=False).initial
    for name, value in sorted(initial.items()):
        print(name, value.shape)
    print(f"total {sum(value.size for value in initial.values())}")


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
