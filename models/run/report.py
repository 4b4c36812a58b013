"""What a run shows while it trains: a progress line within an epoch, and its reports: the
test cost of the averaged weights, metrics, files and a line (docs/model.md §11)."""
import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Optional

from .evaluation import evaluate_set
from .pictures import save_image_grid
from .plot import save_learning_curve
from .results import append_results
from .weights import save_ndict


class ReportError(Exception):
    """The test cost is not a number: training has diverged."""


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


def report(cfg, folder, state, trainer, test_x, sacred_run, processes, seconds, train_cost):
    """Evaluate the averaged weights on the test set; log, plot and save them."""
    results = evaluate_set(trainer, test_x, cfg.n_batch, processes)
    if not math.isfinite(results["cost"]):
        raise ReportError(f"the test cost is {results['cost']} after epoch {state.epoch}; "
                          f"the last checkpoint in {folder} holds the state before this epoch")
    kl = {k[len("cost_z"):]: v for k, v in results.items() if k.startswith("cost_z")}
    state.history["test"].append([state.epoch, results["cost"]])
    state.history["kl"].append([state.epoch, kl])
    is_best = state.best is None or results["cost"] < state.best
    state.best = results["cost"] if is_best else state.best
    processes.check_same_parameters(trainer.state.params.buffer)
    weights = trainer.state.weights()
    logsd = float(weights.get("logsd_x", 0.0))
    for name, value in [("test.cost", results["cost"]), ("test.elbo", results["elbo"]),
                        ("logsd_x", logsd)] + [(f"test.kl.{k}", v) for k, v in kl.items()]:
        sacred_run.log_scalar(name, value, state.epoch)
    if processes.is_main:
        write_report(folder, state, trainer, results, weights, is_best and cfg.save_model)
        print_report(folder, state, seconds, train_cost, results["cost"], logsd)


def write_report(folder, state, trainer, results, weights, keep_best):
    """The report's files: weights (and the best ones, with ``keep_best``), a line of
    results.txt, sample grids from fresh and from fixed noise, the learning curve."""
    save_ndict(weights, os.path.join(folder, "weights.ndict.tar.gz"))
    if keep_best:
        save_ndict(weights, os.path.join(folder, "weights_best.ndict.tar.gz"))
    append_results(folder, state.epoch, results)
    for name, noise in ((f"sample_{state.epoch}.png", ("sample", state.epoch)),
                        (f"sample_fixed1_{state.epoch}.png", ("sample_fixed", 0))):
        save_image_grid(os.path.join(folder, name),
                        trainer.decode(trainer.noise(*noise, range(100))))
    kl_floor = trainer.model.config.kl_min * trainer.model.config.n_z
    save_learning_curve(os.path.join(folder, "learning_curve.png"), state.history,
                        kl_floor=kl_floor or None)


def print_report(folder, state, seconds, train_cost, test_cost, logsd):
    """The original's report line (its header before the first)."""
    if state.epoch == 0:
        print("logdir: t: Epoch: Train cost: Valid cost: Best: log(stdev) of p(x|z):")
    print(f"{os.path.basename(folder)} {seconds:.2f} {state.epoch} {train_cost:.5f} "
          f"{test_cost:.5f} {state.best:.5f} {logsd}", flush=True)


@dataclass
class StopRequest:
    signal: Optional[str] = None  # the name of the signal that asked the run to stop


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set ``.signal`` of the object this yields (the loop finishes its
    minibatch, checkpoints and exits cleanly); a second one stops at once, without a
    checkpoint."""
    stop = StopRequest()

    def handler(signum, _frame):
        if stop.signal is not None:
            raise KeyboardInterrupt
        stop.signal = signal.Signals(signum).name
        print(f"{stop.signal}: stopping after this minibatch (again to stop at once)")
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
