"""The ResNet VAE with inverse autoregressive flow (the original's ``cvae1``), SPEC §5-7.

`VAELayer` is one stochastic ResNet layer: a bottom-up (``up``) and a top-down (``down``)
residual block with a latent ``z`` between them. `ResNetVAE` stacks them in levels,
compiles the training step, evaluation, data-dependent init and sampling, and owns the
parameters, their Polyak averages and the optimiser state.
"""
import math
from collections import OrderedDict

import numpy as np
from layers import (Conv2d, DataInit, IAFNetwork, MaskedConv2d, MaskedResNet, avg_pool2,
                    bernoulli_logps, discretized_logistic_logps, gaussian_diag_logps,
                    gaussian_diag_sample, nonlinearity, upsample_nn2)
from layers.backend import MRG_RandomStreams, T, floatX, theano
from layers.conv import shared

from .optim import AdaMaxPolyak

POSTERIORS = ("up_diag", "up_iaf1", "up_iaf2", "up_iaf1_nl", "up_iaf2_nl", "down_diag",
              "down_iaf1", "down_iaf2", "down_iaf1_nl", "down_iaf2_nl", "down_iaf2_nl2",
              "down_iaf1_deep", "down_iaf2_deep", "down_tim")
PRIORS = ("diag", "diag2", "made")
LIKELIHOODS = ("logistic", "bernoulli")
WEIGHTSHARING = (False, "all", "acrosslevels", "withinlevel")
DOWNSAMPLE_TYPES = ("nn", "conv")
OPTIMISERS = ("adamax",)


class ConfigError(ValueError):
    """An impossible model setting; the message says which and lists the valid choices."""


def _choice(what, value, valid):
    key = value.lower() if isinstance(value, str) else value
    if key not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid choices: "
                          f"{', '.join(map(str, valid))}")
    return key


def _apply_flow(steps, z, logq, context, w):
    """The IAF steps: ``z <- (z - 0.1 m) / exp(0.1 s)``, ``logq += 0.1 s`` (SPEC §5).

    A step returning only ``m`` (the "iaf1" variants) shifts ``z`` and adds no log-det.
    """
    for step in steps:
        out = step(z, context, w)
        if isinstance(out, (list, tuple)):
            mean, logsd = 0.1 * out[0], 0.1 * out[1]
            z = (z - mean) / T.exp(logsd)
            logq = logq + logsd
        else:
            z = z - 0.1 * out
    return z, logq


class _SingleConvFlow:
    """The ``up/down_iaf1`` and ``_iaf2`` transform: one masked conv, no context.

    For iaf2 its ``2 n_z`` outputs interleave mean (even channels) and log-sd (odd).
    """

    def __init__(self, conv, two_outputs):
        self.conv, self.two_outputs = conv, two_outputs
        self.convs = [conv]

    def __call__(self, z, context, w):
        out = self.conv(z, w)
        return (out[:, ::2], out[:, 1::2]) if self.two_outputs else out


class VAELayer:
    """One ResNet-VAE layer ``{i}_{j}`` (SPEC §5); ``downsample`` halves the resolution."""

    def __init__(self, params, rng, name, m, downsample):
        n_h1, n_h2, n_z = m["n_h1"], m["n_h2"], m["n_z"]
        self.n_h2, self.n_z = n_h2, n_z
        self.prior, posterior = m["prior"], m["posterior"]
        self.where, self.kind = posterior.split("_", 1)     # e.g. 'down', 'iaf2_nl'
        self.with_context = self.kind.endswith(("_nl", "_nl2", "_deep"))
        self.downsample = downsample
        self.conv_resample = downsample and m["downsample_type"] == "conv"
        self.nl = nonlinearity(m["nl"])
        ds = 2 if downsample else 1
        kernel, depth_ar = m["kernel_h"], m["depth_ar"]
        # Channel counts of the four convolutions (SPEC §5 table).
        c_up1 = n_h2 + 2 * n_z + (n_h2 if self.with_context else 0)
        up_sampled = self.where == "up" or self.kind == "tim"
        c_up2 = n_h2 + n_z if up_sampled else n_h2
        c_post = 0 if up_sampled else 2 * n_z + (n_h2 if self.with_context else 0)
        self.c_prior = 2 * n_h2 if self.prior == "made" else n_h2 + 2 * n_z
        convs = []  # the masked convolutions of the prior and the posterior flow
        # Construction order follows the original, so a seed draws the same initial weights.
        if self.prior == "made":
            self.prior_net = IAFNetwork(params, rng, name + "_prior_conv1", n_z,
                                        depth_ar * [n_h2], [n_z, n_z], kernel, nl=m["nl"])
            convs += self.prior_net.convs
        self.flow = self._build_flow(params, rng, name, m)
        convs += [c for step in self.flow for c in step.convs]
        if self.conv_resample:
            self.up_conv3 = Conv2d(params, rng, name + "_up_conv3", n_h1, n_h1, kernel,
                                   downsample=2)
            self.down_conv3 = Conv2d(params, rng, name + "_down_conv3", n_h1, n_h1, kernel,
                                     upsample=2)
        self.up_conv1 = Conv2d(params, rng, f"{name}_up_conv1_{ds}", n_h1, c_up1, kernel,
                               downsample=ds)
        self.up_conv2 = Conv2d(params, rng, name + "_up_conv2", c_up2, n_h1, kernel)
        self.down_conv1 = Conv2d(params, rng, name + "_down_conv1", n_h1,
                                 self.c_prior + c_post, kernel)
        self.down_conv2 = Conv2d(params, rng, f"{name}_down_conv2_{ds}", n_h2 + n_z, n_h1,
                                 kernel, upsample=ds)
        self.masked_convs = convs

    def _build_flow(self, params, rng, name, m):
        n_z, n_h2, kernel, depth_ar = m["n_z"], m["n_h2"], m["kernel_h"], m["depth_ar"]
        kind = self.kind
        if kind in ("diag", "tim"):
            return []
        if kind in ("iaf1", "iaf2"):
            two = kind == "iaf2"
            conv = MaskedConv2d(params, rng, name + "_posterior_conv1", n_z,
                                2 * n_z if two else n_z, kernel)
            return [_SingleConvFlow(conv, two)]
        n_out = n_z if kind.startswith("iaf1") else [n_z, n_z]
        if kind.endswith("_deep"):
            return [MaskedResNet(params, rng, name + "_deepiaf", depth_ar, n_z, n_h2, n_out,
                                 kernel, nl=m["nl"])]
        flips = (False, True) if kind.endswith("_nl2") else (False,)
        return [IAFNetwork(params, rng, f"{name}_posterior_conv{k + 1}", n_z,
                           depth_ar * [n_h2], n_out, kernel, flipmask=flip, nl=m["nl"])
                for k, flip in enumerate(flips)]

    # -- bottom-up -------------------------------------------------------------------
    def up(self, x, w, srng):
        """Bottom-up block; returns the output and the state the top-down pass needs."""
        n_h2, n_z = self.n_h2, self.n_z
        h = self.up_conv1(self.nl(x), w)
        state = {"qz_mean": h[:, n_h2:n_h2 + n_z], "qz_logsd": h[:, n_h2 + n_z:n_h2 + 2 * n_z]}
        h_det = h[:, :n_h2]
        context = h[:, n_h2 + 2 * n_z:2 * n_h2 + 2 * n_z] if self.with_context else None
        if self.where == "up":
            logvar = 2 * state["qz_logsd"]
            z = gaussian_diag_sample(srng, state["qz_mean"], logvar)
            logq = gaussian_diag_logps(z, state["qz_mean"], logvar)
            state["z"], state["logq"] = _apply_flow(self.flow, z, logq, context, w)
            h = T.concatenate([h_det, state["z"]], axis=1)
        elif self.kind == "tim":
            h = T.concatenate([h_det, state["qz_mean"]], axis=1)
        else:
            state["up_context"] = context
            h = h_det
        if self.downsample:
            x = self.up_conv3(x, w) if self.conv_resample else avg_pool2(x)
        return x + 0.1 * self.up_conv2(self.nl(h), w), state

    # -- top-down --------------------------------------------------------------------
    def _prior_params(self, h):
        n_h2, n_z = self.n_h2, self.n_z
        return h[:, n_h2:n_h2 + n_z], h[:, n_h2 + n_z:n_h2 + 2 * n_z]

    def _posterior(self, h, state, w, srng):
        """Sample ``z ~ q(z|x)`` (top-down posteriors); returns z and elementwise log q."""
        if self.where == "up":
            return state["z"], state["logq"]
        qz_mean, qz_logvar = state["qz_mean"], 2 * state["qz_logsd"]
        if self.kind == "tim":
            # Precision-weighted combination of the bottom-up q and the prior.
            pz_mean, pz_logsd = self._prior_params(h)
            q_prec, p_prec = T.exp(-qz_logvar), T.exp(-2 * pz_logsd)
            prec = q_prec + p_prec
            mean, logvar = (p_prec * pz_mean + q_prec * qz_mean) / prec, -T.log(prec)
        else:
            p, n_z = self.c_prior, self.n_z
            mean = qz_mean + h[:, p:p + n_z]
            logvar = qz_logvar + 2 * h[:, p + n_z:p + 2 * n_z]
        z = gaussian_diag_sample(srng, mean, logvar)
        logq = gaussian_diag_logps(z, mean, logvar)
        context = None
        if self.with_context:
            p = self.c_prior + 2 * self.n_z
            context = state["up_context"] + h[:, p:p + self.n_h2]
        return _apply_flow(self.flow, z, logq, context, w)

    def _made(self, z, h, w):
        mean, logsd = self.prior_net(z, h[:, self.n_h2:2 * self.n_h2], w)
        return 0.1 * mean, 0.1 * logsd

    def _prior_logps(self, z, h, w):
        """Elementwise log p(z) and the z the decoder sees (diag2 rescales it)."""
        if self.prior == "made":
            mean, logsd = self._made(z, h, w)
            return gaussian_diag_logps(z, mean, 2 * logsd), z
        pz_mean, pz_logsd = self._prior_params(h)
        if self.prior == "diag2":
            return gaussian_diag_logps(z, 0, 0), pz_mean + z * T.exp(pz_logsd)
        return gaussian_diag_logps(z, pz_mean, 2 * pz_logsd), z

    def _decode(self, x, h, z, w):
        h = T.concatenate([h[:, :self.n_h2], z], axis=1)
        if self.downsample:
            x = self.down_conv3(x, w) if self.conv_resample else upsample_nn2(x)
        return x + 0.1 * self.down_conv2(self.nl(h), w)

    def down(self, x, state, w, srng):
        """Top-down block during inference; returns the output and elementwise KL."""
        h = self.down_conv1(self.nl(x), w)
        z, logq = self._posterior(h, state, w, srng)
        logp, z = self._prior_logps(z, h, w)
        return self._decode(x, h, z, w), logq - logp

    def generate(self, x, eps, w):
        """Top-down block when sampling: ``z`` from the prior, driven by noise ``eps``."""
        h = self.down_conv1(self.nl(x), w)
        if self.prior == "made":
            z = self._sample_made(h, eps, w)
        else:
            pz_mean, pz_logsd = self._prior_params(h)
            z = pz_mean + eps * T.exp(pz_logsd)
        return self._decode(x, h, z, w)

    def _sample_made(self, h, eps, w):
        """Exact ancestral sample of the autoregressive prior ``z = m(z) + eps * exp(s(z))``.

        ``m, s`` at a position depend only on earlier positions (raster, then channel), so
        the fixed-point iteration fixes at least one more position per step and reaches the
        unique fixed point in at most ``n_z*H*W`` steps; it stops as soon as z is unchanged.
        """
        def step(z):
            mean, logsd = self._made(z, h, w)
            z_new = mean + eps * T.exp(logsd)
            return z_new, theano.scan_module.until(T.all(T.eq(z_new, z)))

        n_steps = eps.shape[1] * eps.shape[2] * eps.shape[3] + 1
        zs, _ = theano.scan(step, outputs_info=[T.zeros_like(eps)], n_steps=n_steps)
        return zs[-1]


class ResNetVAE:
    """The IAF ResNet VAE. Arguments are the original's ``margs`` (SPEC §8)."""

    def __init__(self, shape_x=(3, 32, 32), depths=(2, 2), n_h1=160, n_h2=160, n_z=32,
                 depth_ar=1, prior="diag", posterior="down_diag", px="logistic", nl="elu",
                 kernel_x=(5, 5), kernel_h=(3, 3), kl_min=0.25, optim="adamax", alpha=0.002,
                 beta1=0.1, beta2=0.001, weightsharing=False, pad_x=0, downsample_type="nn",
                 seed=0):
        m = self.margs = self._validate(**{k: v for k, v in locals().items()
                                           if k not in ("self", "seed")})
        rng = np.random.RandomState(seed)
        # Posterior noise: one stream for training, one for evaluation that
        # `reset_eval_noise` rewinds, so evaluating saved weights gives the logged numbers.
        self.seed = seed % (2**30 - 2) + 1  # MRG seeds must be in [1, 2^30]
        self.srng = MRG_RandomStreams(self.seed)
        self.eval_srng = MRG_RandomStreams(self.seed + 1)
        self.nl = nonlinearity(m["nl"])
        c, height, width = m["shape_x"]
        self.shape_x = (c, height + 2 * m["pad_x"], width + 2 * m["pad_x"])
        self.params = OrderedDict()
        p = self.params
        if m["px"] == "logistic":
            p["logsd_x"] = shared(0.0)
        self.x_enc = Conv2d(p, rng, "x_enc", c, m["n_h1"], m["kernel_x"], downsample=2)
        self.x_dec = Conv2d(p, rng, "x_dec", m["n_h1"], c, m["kernel_x"], upsample=2)
        self.layers = [[VAELayer(p, rng, self._layer_name(i, j), m, downsample=i > 0 and j == 0)
                        for j in range(depth)] for i, depth in enumerate(m["depths"])]
        p["h_top"] = shared(np.zeros(m["n_h1"]))
        self.avg_params = OrderedDict((k, shared(v.get_value())) for k, v in p.items())
        self.optimiser = AdaMaxPolyak(p, self.avg_params, m["alpha"], m["beta1"], m["beta2"])
        self._compiled = {}

    # -- configuration ---------------------------------------------------------------
    @staticmethod
    def _validate(**m):
        m["prior"] = _choice("prior", m["prior"], PRIORS)
        m["posterior"] = _choice("posterior", m["posterior"], POSTERIORS)
        m["px"] = _choice("px (likelihood)", m["px"], LIKELIHOODS)
        m["downsample_type"] = _choice("downsample_type", m["downsample_type"], DOWNSAMPLE_TYPES)
        m["optim"] = _choice("optim", m["optim"], OPTIMISERS)
        m["weightsharing"] = _choice("weightsharing", m["weightsharing"] or False, WEIGHTSHARING)
        try:
            nonlinearity(m["nl"])
        except ValueError as err:
            raise ConfigError(str(err)) from None
        for key in ("kernel_x", "kernel_h"):
            if len(m[key]) != 2 or min(m[key]) < 1 or not all(k % 2 for k in m[key]):
                raise ConfigError(f"{key}={m[key]}: kernels need two odd sizes, e.g. (3, 3)")
        if m["posterior"] == "down_tim" and m["prior"] != "diag":
            raise ConfigError("posterior 'down_tim' needs prior 'diag'")
        depths = m["depths"] = [int(d) for d in m["depths"]]
        if not depths or min(depths) < 1:
            raise ConfigError(f"depths={depths}: need at least one level, each with >= 1 layer")
        for key in ("n_h1", "n_h2", "n_z"):
            if int(m[key]) < 1:
                raise ConfigError(f"{key}={m[key]} must be a positive integer")
        if int(m["depth_ar"]) < 0:
            raise ConfigError(f"depth_ar={m['depth_ar']} must be a non-negative integer")
        if m["kl_min"] < 0:
            raise ConfigError(f"kl_min={m['kl_min']} must be >= 0")
        if m["prior"] == "made" or "iaf" in m["posterior"]:
            if m["n_h2"] % m["n_z"] and m["n_z"] % m["n_h2"]:
                raise ConfigError(f"the masked IAF layers need n_h2={m['n_h2']} and "
                                  f"n_z={m['n_z']} to divide one another")
        c, height, width = (int(s) for s in m["shape_x"])
        m["shape_x"] = (c, height, width)
        factor = 2 ** len(depths)
        size = (height + 2 * m["pad_x"], width + 2 * m["pad_x"])
        if size[0] % factor or size[1] % factor:
            raise ConfigError(f"{len(depths)} levels halve the image {len(depths)} times after "
                              f"the stride-2 input conv, so height and width must be multiples "
                              f"of {factor}; got {size[0]}x{size[1]}: use fewer levels")
        m["kernel_x"], m["kernel_h"] = tuple(m["kernel_x"]), tuple(m["kernel_h"])
        return m

    def _layer_name(self, i, j):
        sharing = self.margs["weightsharing"]
        if sharing == "all":
            return f"[sharedw]{i}_{j}[/sharedw]"
        if sharing:  # 'acrosslevels', and by the original's slip also 'withinlevel'
            return f"[sharedw]{i}[/sharedw]_{j}"
        return f"{i}_{j}"

    @property
    def all_layers(self):
        return [layer for level in self.layers for layer in level]

    @property
    def masked_convs(self):
        return [c for layer in self.all_layers for c in layer.masked_convs]

    def latent_shapes(self, n):
        """Shapes of the noise each layer takes when sampling, in layer order."""
        n_z, (_, height, width) = self.margs["n_z"], self.shape_x
        return [(n, n_z, height // 2 ** (i + 1), width // 2 ** (i + 1))
                for i, level in enumerate(self.layers) for _ in level]

    # -- graphs ----------------------------------------------------------------------
    def _input(self, x):
        """uint8 images -> the floats the likelihood models (SPEC §1), padded by pad_x."""
        xf = T.cast(x, floatX)
        if self.margs["px"] == "logistic":
            xf = T.clip((xf + 0.5) / 256.0, 0, 1)
        pad = self.margs["pad_x"]
        if pad:
            n, c, height, width = xf.shape
            padded = T.zeros((n, c, height + 2 * pad, width + 2 * pad), dtype=floatX)
            xf = T.set_subtensor(padded[:, :, pad:-pad, pad:-pad], xf)
        return xf

    def _top(self, n, w):
        _, height, width = self.shape_x
        factor = 2 ** len(self.layers)
        return T.tile(w["h_top"].dimshuffle("x", 0, "x", "x"),
                      (n, 1, height // factor, width // factor))

    def _output(self, h, w):
        return 0.1 * self.x_dec(self.nl(h), w)

    def _likelihood_mean(self, out):
        if self.margs["px"] == "logistic":
            return T.clip(out + 0.5, 1 / 512.0, 1 - 1 / 512.0)
        return T.clip(T.nnet.sigmoid(out), 1e-7, 1 - 1e-7)

    def _graph(self, x, w, srng=None):
        """Per-image costs of a minibatch ``x`` (uint8) under parameters ``w`` (SPEC §6)."""
        srng = srng or self.srng
        m, xf = self.margs, self._input(x)
        h = self.x_enc(xf - 0.5, w)
        states = []
        for layer in self.all_layers:
            h, state = layer.up(h, w, srng)
            states.append(state)
        h = self._top(x.shape[0], w)
        results, obj_kl, kl_total = OrderedDict(), 0.0, 0.0
        names = [(i, j) for i, level in enumerate(self.layers) for j in range(len(level))]
        for (i, j), layer, state in reversed(list(zip(names, self.all_layers, states))):
            h, kl = layer.down(h, state, w, srng)
            kl_sum = kl.sum(axis=(1, 2, 3))
            results[f"cost_z{i:03d}_{j:03d}"] = kl_sum
            kl_total = kl_total + kl_sum
            if m["kl_min"] > 0:
                # Free bits: per feature map, KL averaged over the minibatch, floored.
                per_map = kl.sum(axis=(2, 3)).mean(axis=0)
                obj_kl = obj_kl + T.maximum(np.float32(m["kl_min"]), per_map).sum()
            else:
                obj_kl = obj_kl + kl_sum
        mean = self._likelihood_mean(self._output(h, w))
        if m["px"] == "logistic":
            logps = discretized_logistic_logps(xf, mean, w["logsd_x"])
        else:
            logps = bernoulli_logps(xf, mean)
        logpx = logps.sum(axis=(1, 2, 3))
        bits = np.float32(1.0 / (np.prod(self.shape_x) * math.log(2.0)))
        # The original reports bits/dim for the logistic likelihood and nats for Bernoulli.
        scale = bits if m["px"] == "logistic" else np.float32(1.0)
        results["cost"] = -(logpx - obj_kl) * scale
        results["cost_x"] = -logpx
        results["elbo"] = -(logpx - kl_total) * bits
        results["log_weight"] = logpx - kl_total
        return results

    def _sample_graph(self, eps, w):
        h = self._top(eps[0].shape[0], w)
        for layer, e in reversed(list(zip(self.all_layers, eps))):
            h = layer.generate(h, e, w)
        image = (256.0 * self._likelihood_mean(self._output(h, w))).astype("uint8")
        pad = self.margs["pad_x"]
        return image[:, :, pad:-pad, pad:-pad] if pad else image

    def _remask_rules(self):
        return {conv.w_name: conv.remask for conv in self.masked_convs}

    def _function(self, key, build):
        if key not in self._compiled:
            self._compiled[key] = build()
        return self._compiled[key]

    # -- public API ------------------------------------------------------------------
    def data_init(self, x, srng=None):
        """Data-dependent init of every conv's ``s`` and ``b`` from batch ``x`` (SPEC §2).

        Its posterior noise comes from a stream of its own (``srng``), so the training
        stream's state depends only on the training steps taken.
        Returns the names of the convolutions skipped because a channel had std 0.
        """
        xs = T.tensor4("x", dtype="uint8")
        w = DataInit(self.params)
        self._graph(xs, w, srng or MRG_RandomStreams(self.seed + 2))
        outputs = [e for _, s, b, ok in w.records for e in (s, b, ok)]
        values = theano.function([xs], outputs)(x)
        skipped = []
        for k, (conv, _, _, _) in enumerate(w.records):
            s, b, ok = values[3 * k:3 * k + 3]
            if ok:
                self.params[conv.s_name].set_value(s.astype(floatX))
                self.params[conv.b_name].set_value(b.astype(floatX))
            else:
                skipped.append(conv.name)
        for name, var in self.params.items():
            self.avg_params[name].set_value(var.get_value())
        return skipped

    def _train_function(self):
        def build():
            xs = T.tensor4("x", dtype="uint8")
            cost = self._graph(xs, self.params)["cost"]
            updates, applied = self.optimiser.updates(cost.sum(), self._remask_rules())
            return theano.function([xs], [cost, applied], updates=updates)
        return self._function("train", build)

    def train_step(self, x):
        """One AdaMax step on minibatch ``x``; returns the per-image cost (before the step)
        and whether the step was applied: if the cost or a gradient is not finite, nothing
        is updated and the caller decides what to do."""
        cost, applied = self._train_function()(x)
        return cost, bool(applied)

    def random_state(self):
        """The training noise stream's state (compiles the training step if needed)."""
        self._train_function()
        return [update[0].get_value() for update in self.srng.state_updates]

    def set_random_state(self, states):
        self._train_function()
        if len(states) != len(self.srng.state_updates):
            raise ConfigError(f"the saved noise state has {len(states)} streams, this model "
                              f"{len(self.srng.state_updates)}: a different model config")
        for update, value in zip(self.srng.state_updates, states):
            update[0].set_value(value)

    def evaluate(self, x):
        """Per-image ``cost``, ``cost_x``, ``cost_z*``, ``elbo`` and ``log_weight`` with the
        Polyak-averaged weights (one posterior sample per image)."""
        def build():
            xs = T.tensor4("x", dtype="uint8")
            results = self._graph(xs, self.avg_params, self.eval_srng)
            return list(results), theano.function([xs], list(results.values()))
        keys, f = self._function("eval", build)
        return OrderedDict(zip(keys, f(x)))

    def reset_eval_noise(self):
        """Rewind the evaluation noise, so that an evaluation pass is repeatable."""
        self.eval_srng.seed(self.seed + 1)

    def sample_noise(self, n, rng):
        """Standard-normal noise for `decode`, from numpy RandomState ``rng``."""
        return [rng.randn(*shape).astype(floatX) for shape in self.latent_shapes(n)]

    def decode(self, eps):
        """uint8 images from noise (averaged weights): ancestral sampling of the prior."""
        def build():
            es = [T.tensor4(f"eps{k}") for k in range(len(self.all_layers))]
            return theano.function(es, self._sample_graph(es, self.avg_params))
        return self._function("decode", build)(*eps)

    def get_weights(self, averaged=True):
        source = self.avg_params if averaged else self.params
        return OrderedDict((k, v.get_value()) for k, v in source.items())

    def set_weights(self, values, complete=True, which=("params", "avg_params")):
        """Load a name -> array dict into the parameters (and their averages).

        Names in ``values`` the model does not have are ignored, as by the original; a
        parameter missing from ``values`` is an error unless ``complete=False``.
        """
        missing = [k for k in self.params if k not in values]
        if missing and complete:
            raise ConfigError(f"the weights lack {len(missing)} parameter(s) of this model: "
                              f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
                              f"(wrong model config? load_model_complete=False skips them)")
        wrong = [f"{k} {np.shape(values[k])} (model: {v.get_value().shape})"
                 for k, v in self.params.items() if k in values
                 and np.shape(values[k]) != v.get_value().shape]
        if wrong:
            raise ConfigError(f"the weights have the wrong shape for: {'; '.join(wrong[:10])}")
        for target in which:
            for k, var in getattr(self, target).items():
                if k in values:
                    var.set_value(np.asarray(values[k], dtype=floatX))
        return missing
