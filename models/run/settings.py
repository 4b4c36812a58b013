"""A run's settings: `RunConfig`, every option of train.py with its default and meaning,
the original's top-level shortcuts for model options, validation, and the reconciliation
with the settings saved with a run (for a command that reads a run folder, and for a
resumed run). Sacred's config, the saved ``config.json`` and the README's table of
options all come from `RunConfig`."""
import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Optional, Tuple

from models.config import ConfigError, ModelConfig

from .folder import saved_config

MODEL_OPTIONS = "margs"  # the original's name for the model's options (a `ModelConfig`)
# What a command that inspects a run folder takes from it unless given (the model, its
# data, the precision its convolutions ran in), and what a resumed run may change.
FROM_RUN = ("model", "data", "precision")
MAY_CHANGE = "may change"


def _model_default(name):
    return next(f.default for f in dataclasses.fields(ModelConfig) if f.name == name)


def option(default, doc, kind=None, shown=None):
    """A field of `RunConfig`: its default (``shown`` otherwise in the README's table), its
    meaning, and its kind: what it is to a saved run (one of `FROM_RUN`, or `MAY_CHANGE`
    on resume)."""
    return field(default=default, metadata={"doc": doc, "kind": kind, "shown": shown})


def shortcut(name, doc, follows=None):
    """A model option the original also takes at the top level: ``margs.<name>`` follows
    it unless given; with ``follows``, it follows that option unless given."""
    metadata = {"doc": doc, "kind": "model", "shortcut": True, "follows": follows,
                "shown": follows and f"`{follows}`"}
    return field(default=None if follows else _model_default(name), metadata=metadata)


@dataclass(frozen=True)
class RunConfig:
    """The settings of a run or command (train.py's config): the run's options and, in
    ``model``, the model's (the original's ``margs``)."""
    problem: str = option("cifar10", "`cifar10` (from `$CIFAR10_PATH`) or `toy` (generated)",
                          "data")
    n_batch: int = option(16, "minibatch size (per process under MPI)", "data")
    n_reporting: int = option(10, "report every this many epochs (and after epochs 0..10)")
    n_epochs: int = option(0, "stop after this many epochs; 0 = never (the original)",
                           MAY_CHANGE)
    n_h: int = option(_model_default("n_h1"), "deterministic feature maps (sets `n_h1`, "
                      "`n_h2`)", "model")
    n_h1: Optional[int] = shortcut("n_h1", "feature maps of the residual path", follows="n_h")
    n_h2: Optional[int] = shortcut("n_h2", "feature maps inside a layer", follows="n_h")
    n_z: int = shortcut("n_z", "stochastic feature maps per layer")
    depths: Tuple[int, ...] = shortcut("depths", "layers per level; each level after the "
                                       "first halves the resolution")
    shape_x: Tuple[int, int, int] = shortcut("shape_x", "image channels, height, width")
    px: str = shortcut("px", "likelihood: `logistic` (discretised) or `bernoulli`")
    pad_x: int = shortcut("pad_x", "zero-padding around the images")
    n_train: int = option(0, "> 0: first `n_train` training *and* test images (as the "
                          "original)", "data")
    model_type: str = option("cvae1", "the ResNet VAE (the only one)", "model")
    save_model: bool = option(True, "also keep `weights_best.ndict.tar.gz`")
    load_model_path: Optional[str] = option(None, "folder with `weights.ndict.tar.gz` to "
                                            "start from or to inspect")
    load_model_complete: bool = option(True, "False: parameters missing from that file "
                                       "keep their init")
    est_marglik: int = option(0, "K > 0: evaluate as `evaluate` does, with -log p(x) "
                              "estimated from K importance samples, then stop")
    est_marglik_data: str = option("valid", "`valid` (test set) or `train`")
    resume: Optional[str] = option(None, "a run folder: continue it from its checkpoint")
    checkpoint_minutes: float = option(5.0, "checkpoint this often within an epoch (and at "
                                       "each epoch's end)", MAY_CHANGE)
    skip_nonfinite: bool = option(False, "skip (and count) steps with a NaN/inf cost or "
                                  "gradient instead of stopping", MAY_CHANGE)
    conv_precision: str = option("fp32", "`fp32` (the original's numbers) or `bf16`: the "
                                 "convolutions' inputs rounded to bf16 for the CPU's bf16 "
                                 "matrix units (*Convolutions in bf16*)", "precision")
    n_samples: int = option(100, "`sample`: how many images")
    temperature: float = option(1.0, "`sample`, `reconstruct`: scale of the prior's noise")
    n_images: int = option(10, "`reconstruct`: how many test images")
    seed: Optional[int] = option(None, "sacred's seed: data shuffle, init, minibatch order, "
                                 "noise", "data", shown="random")
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        for key in ("n_batch", "n_reporting"):
            value = getattr(self, key)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ConfigError(f"{key}={value} must be a positive integer")
        choices = {"model_type": ("cvae1",), "est_marglik_data": ("valid", "train")}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ConfigError(f"unknown {key} {getattr(self, key)!r}; valid choices: "
                                  f"{', '.join(valid)}")

    @classmethod
    def from_options(cls, options):
        """The `RunConfig` of ``options``, a dict as sacred resolves train.py's config or as
        a run folder saved it (the model's options under ``margs``)."""
        options = with_shortcuts_resolved(plain(options))
        check_known(options)
        try:
            model = ModelConfig(**options.pop(MODEL_OPTIONS))
        except TypeError as err:  # e.g. options saved by another version of this code
            raise ConfigError(f"margs do not fit this version's model options ({err})") \
                from None
        return cls(model=model, **options)

    def as_dict(self):
        """Plain JSON-able values, keyed as on the command line (``margs`` for the model's
        options): what ``config.json`` and checkpoints hold."""
        values = {f.name: getattr(self, f.name) for f in _run_fields()}
        return plain({**values, MODEL_OPTIONS: self.model.as_dict()})


def _run_fields():
    return [f for f in dataclasses.fields(RunConfig) if f.name != "model"]


def keys_of(*kinds):
    """The names of the options of the given kinds (``margs`` stands for the model's)."""
    return tuple(f.name for f in _run_fields() if f.metadata["kind"] in kinds) + \
        ((MODEL_OPTIONS,) if "model" in kinds else ())


SHORTCUTS = tuple(f.name for f in _run_fields() if f.metadata.get("shortcut"))
# Options added since a run folder may have been made, at the value such a run had.
ADDED_SETTINGS = {"conv_precision": "fp32"}


def plain(value):
    """``value`` as JSON holds it (lists for tuples)."""
    return json.loads(json.dumps(value))


def sacred_defaults():
    """train.py's config for sacred: every option's default, the model's options under
    ``margs``; a value left None there follows its shortcut (`with_shortcuts_resolved`)."""
    values = {f.name: f.default for f in _run_fields() if f.name != "seed"}
    margs = {**ModelConfig().as_dict(), **{key: None for key in SHORTCUTS}}
    return plain({**values, MODEL_OPTIONS: margs})


def with_shortcuts_resolved(options):
    """``options`` with the original's shortcuts followed: ``n_h1`` and ``n_h2`` are
    ``n_h`` unless given, and each model option with a top-level key is that key's value
    unless given under ``margs``."""
    options = dict(options)
    for f in _run_fields():
        if f.metadata.get("follows") and options.get(f.name) is None:
            options[f.name] = options[f.metadata["follows"]]
    margs = dict(options.get(MODEL_OPTIONS) or {})
    for key in SHORTCUTS:
        if margs.get(key) is None:
            margs[key] = options[key]
    return {**options, MODEL_OPTIONS: margs}


def check_known(options):
    """Refuse a misspelled key, naming the nearest valid one."""
    model_keys = [f.name for f in dataclasses.fields(ModelConfig)]
    for keys, valid, prefix in ((options, [f.name for f in _run_fields()] + [MODEL_OPTIONS],
                                 ""), (options.get(MODEL_OPTIONS) or {}, model_keys, "margs.")):
        for key in keys:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f"did you mean {prefix}{close[0]}?" if close else \
                    f"valid keys: {', '.join(prefix + v for v in valid)}"
                raise ConfigError(f"unknown config key {prefix + key!r}; {hint}")


def option_docs():
    """Each top-level option's meaning, by name."""
    return {f.name: f.metadata["doc"] for f in _run_fields()}


def option_table():
    """The README's table of top-level options, from `RunConfig`."""
    def shown(f):
        value = plain(f.default)
        return f.metadata["shown"] or (f"`{value}`" if isinstance(value, (str, list)) else
                                       str(value)).replace(" ", "")
    rows = [f"| `{f.name}` | {shown(f)} | {f.metadata['doc']} |" for f in _run_fields()]
    return "\n".join(["| key | default | meaning |", "|---|---|---|"] + rows) + "\n"


def config_differences(saved, current, keys):
    """``key: saved -> given`` for each user-set key whose value differs from the saved run."""
    def lookup(cfg, dotted):
        for part in dotted.split("."):
            cfg = cfg.get(part) if isinstance(cfg, dict) else None
        return cfg
    return [f"{k}: {lookup(saved, k)!r} -> {lookup(current, k)!r}" for k in sorted(keys)
            if plain(lookup(saved, k)) != plain(lookup(current, k))]


def _user_set(sacred_run):
    """The keys a named config changed or the command line set (to any value: sacred counts
    as modified only a value that differs from the default), each as deep as given: not
    ``margs`` for ``margs.kl_min`` (sacred marks both)."""
    given = {update.split("=", 1)[0] for update in
             sacred_run.meta_info.get("options", {}).get("UPDATE") or []}
    keys = sacred_run.config_modifications.modified | given
    return {k for k in keys if not any(other.startswith(k + ".") for other in keys)}


def _canonical(options):
    """``options`` as `RunConfig` holds them (names in lower case, shortcuts resolved), so
    that spellings of one setting compare equal."""
    return RunConfig.from_options(options).as_dict()


def _canonical_saved(options):
    """Settings a run folder saved, canonical, with those it predates at its version's value."""
    return _canonical({**ADDED_SETTINGS, **options})


def command_settings(config, sacred_run, processes, from_run=keys_of("model")):
    """The command's `RunConfig`, rank 0's on every rank (sacred draws a seed in each
    process). If ``load_model_path`` is a run folder of this project, its saved
    ``from_run`` keys replace the defaults; given values that contradict saved model
    options are refused."""
    cfg = _canonical(config)
    saved = saved_config(cfg["load_model_path"]) if processes.is_main else None
    if saved is not None:
        saved = _canonical_saved(saved)
        given = _user_set(sacred_run)
        differences = config_differences(saved, cfg, {k for k in given
                                                      if k.split(".")[0] in keys_of("model")})
        if differences:
            raise ConfigError(f"the model options contradict those saved with the run in "
                              f"{cfg['load_model_path']}: {'; '.join(differences)}")
        cfg.update({k: saved[k] for k in from_run if k in saved and k not in given})
    return RunConfig.from_options(processes.broadcast(cfg))


def resumed_settings(saved, cfg, sacred_run, folder):
    """The `RunConfig` of the run in ``folder`` (``saved``: the settings its checkpoint
    holds), with those a resumed run may change taken from ``cfg`` where given; other
    given values that contradict the saved ones are refused."""
    current, saved = cfg.as_dict(), _canonical_saved({**saved, "resume": folder})
    may_change, given = keys_of(MAY_CHANGE), _user_set(sacred_run)
    differences = config_differences(saved, current, {
        k for k in given if k.split(".")[0] not in ("resume", "seed") + may_change})
    if differences:
        raise ConfigError(f"the config contradicts the run in {folder}: {'; '.join(differences)}")
    saved.update({k: current[k] for k in may_change if k in given})
    return RunConfig.from_options(saved)
