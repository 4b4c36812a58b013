"""A run's settings, their reconciliation with a saved run, and the loop's state: the
checkpoint that stops a run and the resume that continues it exactly."""
import dataclasses
import json
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

from models.config import ConfigError

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .folder import saved_config
from .results import trim_results

# Model options the original also takes at the top level (n_h sets n_h1 and n_h2).
MODEL_SHORTCUTS = ("px", "pad_x", "shape_x", "n_z", "n_h1", "n_h2", "depths")
# The settings that define the model, and those that say which data a run used.
MODEL_KEYS = ("model_type", "n_h", "margs") + MODEL_SHORTCUTS
DATA_KEYS = ("problem", "n_train", "n_batch", "seed")
# What a command that inspects a run folder takes from it unless given: the model, its
# data and the precision its convolutions ran in.
INSPECTION_KEYS = MODEL_KEYS + DATA_KEYS + ("conv_precision",)
# Settings added since a run folder may have been made, at the value such a run had.
ADDED_SETTINGS = {"conv_precision": "fp32"}
# What a resumed run may change: when to stop, how to treat a NaN, how often to checkpoint.
MAY_CHANGE = ("n_epochs", "skip_nonfinite", "checkpoint_minutes")


class Settings(SimpleNamespace):
    """A run's settings (train.py's config, as sacred resolves it) read as attributes:
    ``cfg.n_batch``; ``cfg.margs`` is the dict of model options."""

    def as_dict(self):
        return json.loads(json.dumps(vars(self)))


def config_differences(saved, current, keys):
    """``key: saved -> given`` for each user-set key whose value differs from the saved run."""
    def lookup(cfg, dotted):
        for part in dotted.split("."):
            cfg = cfg.get(part) if isinstance(cfg, dict) else None
        return cfg
    normal = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples vs lists)
    return [f"{k}: {lookup(saved, k)!r} -> {lookup(current, k)!r}" for k in sorted(keys)
            if normal(lookup(saved, k)) != normal(lookup(current, k))]


def _user_set(sacred_run, exclude=()):
    """The keys a named config changed or the command line set (to any value: sacred counts
    as modified only a value that differs from the default)."""
    given = {update.split("=", 1)[0] for update in
             sacred_run.meta_info.get("options", {}).get("UPDATE") or []}
    return {k for k in sacred_run.config_modifications.modified | given
            if k.split(".")[0] not in exclude}


def command_settings(config, sacred_run, processes, saved_keys=MODEL_KEYS):
    """The command's `Settings`, rank 0's on every rank (sacred draws a seed in each
    process). If ``load_model_path`` is a run folder of this project, its saved
    ``saved_keys`` replace the defaults; given values that contradict saved model options
    are refused."""
    cfg = json.loads(json.dumps(config))
    saved = saved_config(cfg["load_model_path"]) if processes.is_main else None
    if saved is not None:
        saved = {**ADDED_SETTINGS, **saved}
        given = _user_set(sacred_run)
        differences = config_differences(saved, cfg, {k for k in given
                                                      if k.split(".")[0] in MODEL_KEYS})
        if differences:
            raise ConfigError(f"the model options contradict those saved with the run in "
                              f"{cfg['load_model_path']}: {'; '.join(differences)}")
        cfg.update({k: saved[k] for k in saved_keys if k in saved and k not in given})
    return Settings(**processes.broadcast(cfg))


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


def check_ranks_agree(trainer, processes):
    """Stop with an error if the ranks' parameters differ (a checksum compared), before
    anything is written from them."""
    processes.check_identical(trainer.params.buffer, "parameters", "the ranks no longer "
                              "train one model (a faulty machine or MPI library?): resume "
                              "from the last checkpoint")


def save_run(folder, cfg, state, trainer, processes):
    """Checkpoint the run, once every rank is seen to hold the same parameters."""
    check_ranks_agree(trainer, processes)
    if processes.is_main:
        meta = {"config": cfg.as_dict(), "loop": dataclasses.asdict(state)}
        save_checkpoint(folder, trainer.training_state(), meta)
    processes.broadcast(None)  # no rank goes on, or ends, before it is written


def saved_run(folder, cfg, sacred_run, processes):
    """``(settings, loop state, arrays)`` of the run in ``folder`` as its checkpoint left
    it, with the settings a resumed run may change taken from ``cfg``; rank 0 reads the
    checkpoint (other ranks, which may run on machines without the folder, get None for
    the arrays: `restore_training_state` sends them)."""
    arrays, meta = load_checkpoint(folder) if processes.is_main else (None, None)
    meta = processes.broadcast(meta)
    current, saved = cfg.as_dict(), {**ADDED_SETTINGS, **meta["config"], "resume": folder}
    differences = config_differences(saved, current,
                                     _user_set(sacred_run, ("resume", "seed") + MAY_CHANGE))
    if differences:
        raise ConfigError(f"the config contradicts the run in {folder}: {'; '.join(differences)}")
    given = _user_set(sacred_run)
    saved.update({k: current[k] for k in MAY_CHANGE if k in given})
    return Settings(**saved), LoopState(**meta["loop"]), arrays


def restore_training_state(trainer, arrays, folder, state, processes):
    """Put rank 0's checkpoint ``arrays`` into every rank's trainer and forget the reports
    the checkpoint does not know of."""
    if processes.is_main:
        try:
            trainer.set_training_state(arrays)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"the checkpoint in {folder} does not fit its own config's "
                                  f"model ({err}): a damaged file?") from None
    values = trainer.training_state()  # rank 0's, sent to the others
    for name in sorted(values):
        processes.broadcast_(values[name])
    if not processes.is_main:
        trainer.set_training_state(values)
    if processes.is_main:
        trim_results(folder, {epoch for epoch, _ in state.history["test"]})
    print(f"Resuming {folder} at epoch {state.epoch}, image {state.images_done}")
