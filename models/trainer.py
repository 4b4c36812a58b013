"""The compiled side of a `ResNetVAE`: the functions that train, evaluate, initialise and
sample it (each compiled once per process, and kept in the function cache on disk between
processes), over the flat shared vectors of its `TrainingState`."""
from collections import OrderedDict
from pathlib import Path

import numpy as np
from layers import ops
from layers.conv import DataInit
from layers.runtime.backend import T, theano
from layers.runtime.function_cache import FunctionCache

from .config import ConfigError
from .noise import image_noise
from .optim import GradientVector
from .state import TrainingState

# The source that builds the graphs the function cache keeps: the model's modules (not the
# run's, in models/run) and the building blocks.
GRAPH_SOURCES = sorted(Path(__file__).parent.glob("*.py")) + [Path(ops.__file__).parents[1]]


def check_conv_precision(precision):
    """Raise `ConfigError`, in one sentence, unless convolutions can run in ``precision``
    ('fp32' or 'bf16') here."""
    problem = ops.conv_precision_problem(precision)
    if problem:
        raise ConfigError(problem)


class Trainer:
    """A `ResNetVAE`'s compiled functions over its ``state`` (a `TrainingState`), with the
    convolutions' inputs in ``conv_precision`` ('fp32' or 'bf16', docs/model.md §13).
    ``model.seed`` also keys every posterior sample (docs/model.md §9)."""

    def __init__(self, model, conv_precision="fp32"):
        check_conv_precision(conv_precision)
        self.model, cfg = model, model.config
        self.conv_precision = conv_precision
        self.state = TrainingState(model)
        optimiser = self.state.optimiser
        shared = dict(optimiser.state, adamax_keep=optimiser.keep)
        key = {"config": cfg.as_dict(), "custom_ops": ops.CUSTOM_OPS,
               "conv_precision": conv_precision}
        self._cache = FunctionCache(key, GRAPH_SOURCES,
                                    {var.name: var for var in shared.values()})
        self._compiled = {}

    def noise(self, purpose, step, positions):
        """Standard-normal noise, one array per layer, for the images at ``positions`` at
        ``step`` (the places and steps of docs/model.md §9)."""
        return image_noise(self.model.latent_shapes(), self.model.seed, purpose, step,
                           positions)

    def _inputs(self):
        """Symbolic inputs: a uint8 minibatch and one noise tensor per layer."""
        return (T.tensor4("x", dtype="uint8"),
                [T.tensor4(f"eps{k}") for k in range(len(self.model.vae_layers))])

    def _function(self, name, build):
        """``(function, extra)`` from ``build()``, compiled once (and cached on disk)."""
        if name not in self._compiled:
            with ops.conv_precision(self.conv_precision):
                self._compiled[name] = self._cache.get(name, build)
        return self._compiled[name]

    # -- training ----------------------------------------------------------------------
    def data_init(self, x, eps):
        """Data-dependent init of every conv's ``s`` and ``b`` from batch ``x`` with
        posterior noise ``eps`` (docs/model.md §2). Returns the names of the convolutions
        skipped because a channel had std 0."""
        def build():
            xs, es = self._inputs()
            params = DataInit(self.state.params)
            self.model.costs(xs, es, params)
            outputs = [e for _, s, b, ok in params.records for e in (s, b, ok)]
            names = [(conv.s_name, conv.b_name, conv.name) for conv, _, _, _ in params.records]
            return theano.function([xs] + es, outputs), names
        f, names = self._function("data_init", build)
        values = f(x, *eps)
        skipped, found = [], {}
        for k, (s_name, b_name, conv_name) in enumerate(names):
            s, b, ok = values[3 * k:3 * k + 3]
            if ok:
                found.update({s_name: s, b_name: b})
            else:
                skipped.append(conv_name)
        self.state.params.set_values(found)
        self.state.avg_params.set_buffer(self.state.params.buffer)
        return skipped

    def gradient(self, x, eps, into=None):
        """Per-image cost of minibatch ``x`` with posterior noise ``eps``, and the
        `GradientVector` ``into`` (by default a new one) holding the gradient of the summed
        cost, with that cost in its ``cost`` slot and its other slots 0."""
        def build():
            xs, es = self._inputs()
            cost = self.model.costs(xs, es, self.state.params)["cost"]
            total = cost.sum()
            grads = self.state.optimiser.gradients(total)
            outputs = [cost, total] + [theano.Out(g, borrow=True) for g in grads]
            return theano.function([xs] + es, outputs), None
        f = self._function("gradient", build)[0]
        vector = GradientVector(self.state.params) if into is None else into
        # The function's ops write the gradients straight into the vector's parts when
        # their output storage holds them (c_support's iaf_output): no copy, no memory.
        for container, part in zip(f.output_storage[2:], vector.parts):
            container.storage[0] = part
        cost, total, *grads = f(x, *eps)
        for gradient, part in zip(grads, vector.parts):
            if gradient is not part:
                part[...] = gradient
        vector.clear_slots()
        vector["cost"] = total
        return cost, vector

    def apply_gradient(self, vector):
        """One AdaMax step with a `GradientVector` from `gradient` (or a sum of them);
        False if anything in it is not finite, in which case nothing changed."""
        def build():
            g = T.vector("gradient", dtype=self.state.params.shared.dtype)
            updates, applied = self.state.optimiser.update(g)
            # The op updates the buffers in place.
            return theano.function([g], applied, updates=updates, accept_inplace=True), None
        return bool(self._function("update", build)[0](vector.array))

    def convolutions(self):
        """One line: what the convolutions run on, in which precision (after a first call,
        the oneDNN implementations chosen for each pass)."""
        if not ops.CUSTOM_OPS:
            return "Convolutions: plain Theano (IAF_CUSTOM_OPS=0), fp32"
        chosen = ops.onednn.implementations().get(self.conv_precision, "none run yet")
        return f"Convolutions: oneDNN, {self.conv_precision} inputs ({chosen})"

    # -- evaluation and sampling (with the averaged weights) ----------------------------
    def evaluate(self, x, eps):
        """Per-image ``cost``, ``cost_x``, per-layer KL ``cost_z*``, ``elbo`` and
        ``log_weight`` with posterior noise ``eps``."""
        def build():
            xs, es = self._inputs()
            results = self.model.costs(xs, es, self.state.avg_params)
            return theano.function([xs] + es, list(results.values())), list(results)
        f, keys = self._function("eval", build)
        return OrderedDict(zip(keys, f(x, *eps)))

    def decode(self, eps):
        """uint8 images from noise: ancestral sampling of the prior. Noise scaled by a
        temperature ``t`` samples at that temperature."""
        def build():
            _, es = self._inputs()
            return theano.function(es, self.model.samples(es, self.state.avg_params)), None
        return self._function("decode", build)[0](*eps)

    def reconstruct(self, x, eps, prior_eps, from_posterior):
        """uint8 images decoded from ``x`` with each layer's z from the posterior (noise
        ``eps``) where ``from_posterior`` (a 0/1 flag per layer, in layer order) is 1, and
        from the prior (noise ``prior_eps``) elsewhere."""
        def build():
            xs, es = self._inputs()
            ps = [T.tensor4(f"prior_eps{k}") for k in range(len(es))]
            flags = T.bvector("from_posterior")
            images = self.model.reconstructions(xs, es, ps, flags, self.state.avg_params)
            return theano.function([xs] + es + ps + [flags], images), None
        f = self._function("reconstruct", build)[0]
        return f(x, *eps, *prior_eps, np.asarray(from_posterior, np.int8))

    def latents(self, x, eps):
        """Per layer (in layer order): the mean of the posterior's Gaussian for every unit,
        ``(N, n_z*h*w)``, and the KL of every feature map, ``(N, n_z)``."""
        def build():
            xs, es = self._inputs()
            _, _, kls, means = self.model.inference(xs, es, self.state.avg_params)
            outputs = [v for key in self.model.vae_layers
                       for v in (means[key].flatten(2), kls[key].sum(axis=(2, 3)))]
            return theano.function([xs] + es, outputs), None
        outputs = self._function("latents", build)[0](x, *eps)
        return list(zip(outputs[::2], outputs[1::2]))
