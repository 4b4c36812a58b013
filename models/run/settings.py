"""A run's settings (train.py's config, as sacred resolves it) and their reconciliation with
those saved with a run: for a command that reads a run folder, and for a resumed run."""
import json
from types import SimpleNamespace

from models.config import ConfigError

from .folder import saved_config

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


def resumed_settings(saved, cfg, sacred_run, folder):
    """The `Settings` of the run in ``folder`` (``saved``: those its checkpoint holds), with
    those a resumed run may change taken from ``cfg`` where given; other given values that
    contradict the saved ones are refused."""
    current, saved = cfg.as_dict(), {**ADDED_SETTINGS, **saved, "resume": folder}
    differences = config_differences(saved, current,
                                     _user_set(sacred_run, ("resume", "seed") + MAY_CHANGE))
    if differences:
        raise ConfigError(f"the config contradicts the run in {folder}: {'; '.join(differences)}")
    given = _user_set(sacred_run)
    saved.update({k: current[k] for k in MAY_CHANGE if k in given})
    return Settings(**saved)
