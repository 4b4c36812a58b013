"""Parameter names: how the model builds them and what they say about a model's options.

Every parameter of layer ``(i, j)`` (level i, position j) starts with ``{i}_{j}_``, or
with the original's weight-sharing markers (docs/model.md §7); its reports and metrics use
the key ``{i:03d}_{j:03d}``.
"""
import re

import numpy as np

from .config import ConfigError

_LAYER_PREFIX = re.compile(r"(\d+)_(\d+)_")


def layer_name(i, j, weightsharing=False):
    """The name of layer ``(i, j)`` as the original gives it to its convolutions."""
    if weightsharing == "all":
        return f"[sharedw]{i}_{j}[/sharedw]"
    if weightsharing:  # 'acrosslevels', and by the original's slip also 'withinlevel'
        return f"[sharedw]{i}[/sharedw]_{j}"
    return f"{i}_{j}"


def layer_key(i, j):
    """The key of layer ``(i, j)`` in results, metrics and reports: ``001_000``."""
    return f"{i:03d}_{j:03d}"


def architecture(shapes):
    """What parameter names and shapes say about the options of the model that has them."""
    levels = {}
    for name in shapes:
        match = _LAYER_PREFIX.match(name)
        if match:
            i, j = int(match[1]), int(match[2])
            levels[i] = max(levels.get(i, 0), j + 1)
    found = {"depths": [levels[i] for i in sorted(levels)]}
    if "x_enc_w" in shapes:
        found["n_h"] = shapes["x_enc_w"][0]
        down_conv2 = shapes.get(f"{layer_name(0, 0)}_down_conv2_1_w")
        if down_conv2:  # its inputs (docs/model.md §5): n_h2 + n_z, then the pad channel
            found["n_z"] = down_conv2[1] - 1 - found["n_h"]
    flows = [("_deepiaf_", "a masked ResNet (_deep)"), ("_posterior_conv2_", "two networks (_nl2)"),
             ("_posterior_conv1_out_", "a network (_nl)"), ("_posterior_conv1_w", "one masked conv")]
    found["posterior flow"] = next((what for key, what in flows
                                    if any(key in n for n in shapes)), "none (diag or tim)")
    found["prior"] = "made" if any("_prior_conv1_" in n for n in shapes) else "diag or diag2"
    return found


def check_weights_fit(values, model_shapes, complete, source=None):
    """Refuse weights ``values`` (name -> array) that do not fit a model with
    ``model_shapes``, with one sentence naming the options they seem to have been trained
    with, or the tensors that differ; returns the model's parameters missing from them
    (an error unless ``complete`` is False)."""
    missing = [k for k in model_shapes if k not in values]
    wrong = [k for k in model_shapes if k in values and np.shape(values[k]) != model_shapes[k]]
    if wrong or (missing and complete):
        raise ConfigError(_mismatch_message(values, model_shapes, missing, wrong, source))
    return missing


def _mismatch_message(values, model_shapes, missing, wrong, source):
    where = source or "the weights"
    theirs = architecture({k: np.shape(v) for k, v in values.items()})
    ours = architecture(model_shapes)
    differences = [f"{key} {theirs.get(key)} (this model: {ours.get(key)})"
                   for key in ours if theirs.get(key) != ours.get(key)]
    if differences:
        return (f"{where} belong to another model: {'; '.join(differences)}; give the options "
                f"of the run that wrote them (n_h, n_z, depths, margs.posterior, ...)")
    if wrong:
        shapes = [f"{k} {np.shape(values[k])} (this model: {model_shapes[k]})" for k in wrong]
        return f"{where} have other shapes than this model for {'; '.join(shapes[:3])}"
    return (f"{where} lack {len(missing)} parameter(s) of this model, e.g. {missing[0]} "
            f"(load_model_complete=False keeps their initial values)")
