"""The ResNet VAE with inverse autoregressive flow (the original's ``cvae1``).

`VAELayer` is one stochastic layer (docs/model.md §5, §6): a bottom-up and a top-down
residual block with a latent ``z`` between them. `ResNetVAE` stacks them in levels (§7),
defines the objective (§8), and compiles the training step, evaluation, data-dependent
init and sampling. It owns the parameters, their Polyak averages and the optimiser.
"""
import math
from collections import OrderedDict
from pathlib import Path

import layers
import numpy as np
from layers import (Conv2d, DataInit, IAFNetwork, MaskedConv2d, MaskedResNet, avg_pool2,
                    bernoulli_logps, discretized_logistic_logps, gaussian_diag_logps,
                    nonlinearity, upsample_nn2)
from layers.backend import T, floatX, ifelse, theano
from layers.function_cache import FunctionCache
from layers.parameters import FlatParameters

from .config import ConfigError, ModelConfig
from .noise import image_noise
from .optim import AdaMaxPolyak
from .weights import mismatch_message


def iaf_step(z, logq, mean, logsd=None):
    """One flow step (docs/model.md §6): ``z <- (z - 0.1 m) / exp(0.1 s)``,
    ``log q += 0.1 s``; a mean-only step (no ``logsd``) shifts ``z`` alone."""
    if logsd is None:
        return z - 0.1 * mean, logq
    return (z - 0.1 * mean) / T.exp(0.1 * logsd), logq + 0.1 * logsd


class ChannelLayout:
    """Named consecutive channel ranges of a convolution's output (docs/model.md §5).

    ``ChannelLayout(h=8, qz_mean=4, up_context=0)``: keyword order is channel order, and a
    part of size 0 is absent.
    """

    def __init__(self, **sizes):
        self.sizes = {name: n for name, n in sizes.items() if n}

    @property
    def n_channels(self):
        return sum(self.sizes.values())

    def split(self, h):
        """The parts of ``h`` by name (copies: the gradient of a split is one concatenation
        of the parts' gradients, where slices would each add theirs into a zero array)."""
        if len(self.sizes) == 1:
            return {name: h for name in self.sizes}
        parts = T.split(h, list(self.sizes.values()), len(self.sizes), axis=1)
        return dict(zip(self.sizes, parts))


class MaskedConvFlow:
    """The flow of ``iaf1``/``iaf2`` posteriors without a network: one masked conv whose
    ``2 n_z`` outputs (iaf2) interleave mean (even channels) and log-sd (odd channels)."""

    def __init__(self, params, rng, name, n_z, n_outputs, kernel):
        self.n_outputs = n_outputs
        self.conv = MaskedConv2d(params, rng, name, n_z, n_outputs * n_z, kernel)
        self.convs = [self.conv]

    def __call__(self, z, context, w):
        out = self.conv(z, w)
        return [out] if self.n_outputs == 1 else [out[:, ::2], out[:, 1::2]]


class VAELayer:
    """One ResNet-VAE layer ``{i}_{j}``; ``downsample`` halves the resolution."""

    def __init__(self, params, rng, name, cfg, downsample):
        self.cfg, self.q = cfg, cfg.parsed_posterior
        self.downsample = downsample
        self.resample_convs = downsample and cfg.downsample_type == "conv"
        self.nl = nonlinearity(cfg.nl)
        n_h1, n_h2, n_z, kernel = cfg.n_h1, cfg.n_h2, cfg.n_z, cfg.kernel_h
        made, top_down = cfg.prior == "made", self.q.where == "down" and self.q.kind != "tim"
        context = n_h2 if self.q.has_context else 0
        self.up_parts = ChannelLayout(h=n_h2, qz_mean=n_z, qz_logsd=n_z, up_context=context)
        self.down_parts = ChannelLayout(
            h=n_h2, pz_mean=0 if made else n_z, pz_logsd=0 if made else n_z,
            prior_context=n_h2 if made else 0, rz_mean=n_z * top_down, rz_logsd=n_z * top_down,
            down_context=context * top_down)
        ds = 2 if downsample else 1
        # Construction order follows the original, so a seed draws the same initial weights.
        self.prior_net = IAFNetwork(params, rng, name + "_prior_conv1", n_z,
                                    cfg.depth_ar * [n_h2], [n_z, n_z], kernel,
                                    nl=cfg.nl) if made else None
        self.flow = self._build_flow(params, rng, name)
        if self.resample_convs:
            self.up_conv3 = Conv2d(params, rng, name + "_up_conv3", n_h1, n_h1, kernel,
                                   downsample=2)
            self.down_conv3 = Conv2d(params, rng, name + "_down_conv3", n_h1, n_h1, kernel,
                                     upsample=2)
        self.up_conv1 = Conv2d(params, rng, f"{name}_up_conv1_{ds}", n_h1,
                               self.up_parts.n_channels, kernel, downsample=ds)
        self.up_conv2 = Conv2d(params, rng, name + "_up_conv2",
                               n_h2 if top_down else n_h2 + n_z, n_h1, kernel)
        self.down_conv1 = Conv2d(params, rng, name + "_down_conv1", n_h1,
                                 self.down_parts.n_channels, kernel)
        self.down_conv2 = Conv2d(params, rng, f"{name}_down_conv2_{ds}", n_h2 + n_z, n_h1,
                                 kernel, upsample=ds)
        # The masked convolutions of the prior and the flow (re-masked after each step).
        self.masked_convs = (self.prior_net.convs if made else []) + \
            [conv for net in self.flow for conv in net.convs]

    def _build_flow(self, params, rng, name):
        """The networks of the posterior's flow steps, one per step (docs/model.md §6)."""
        q, cfg = self.q, self.cfg
        if not q.has_flow:
            return []
        outputs = [cfg.n_z] if q.kind == "iaf1" else [cfg.n_z, cfg.n_z]
        hidden = cfg.depth_ar * [cfg.n_h2]
        if q.network == "":
            return [MaskedConvFlow(params, rng, name + "_posterior_conv1", cfg.n_z,
                                   len(outputs), cfg.kernel_h)]
        if q.network == "deep":
            return [MaskedResNet(params, rng, name + "_deepiaf", cfg.depth_ar, cfg.n_z,
                                 cfg.n_h2, outputs, cfg.kernel_h, nl=cfg.nl)]
        flips = (False, True) if q.network == "nl2" else (False,)
        return [IAFNetwork(params, rng, f"{name}_posterior_conv{k + 1}", cfg.n_z, hidden,
                           outputs, cfg.kernel_h, flipmask=flip, nl=cfg.nl)
                for k, flip in enumerate(flips)]

    def _sample(self, mean, logsd, eps, context, w):
        """``z ~ q``: a Gaussian sample driven by ``eps``, then the flow; with log q."""
        z = mean + T.exp(logsd) * eps
        logq = gaussian_diag_logps(z, mean, 2 * logsd)
        for net in self.flow:
            z, logq = iaf_step(z, logq, *net(z, context, w))
        return z, logq

    # -- bottom-up ---------------------------------------------------------------------
    def up(self, x, eps, w):
        """Bottom-up block; returns its output and the parts the top-down block uses."""
        u = self.up_parts.split(self.up_conv1(self.nl(x), w))
        h = u["h"]
        if self.q.where == "up":
            u["z"], u["logq"] = self._sample(u["qz_mean"], u["qz_logsd"], eps,
                                             u.get("up_context"), w)
            h = T.concatenate([h, u["z"]], axis=1)
        elif self.q.kind == "tim":
            h = T.concatenate([h, u["qz_mean"]], axis=1)
        if self.downsample:
            x = self.up_conv3(x, w) if self.resample_convs else avg_pool2(x)
        return x + 0.1 * self.up_conv2(self.nl(h), w), u

    # -- top-down ----------------------------------------------------------------------
    def _posterior(self, d, u, eps, w):
        """``z ~ q(z|x)``, elementwise log q, and the mean of q's Gaussian before the flow,
        from the down (``d``) and up (``u``) parts."""
        if self.q.where == "up":
            return u["z"], u["logq"], u["qz_mean"]
        if self.q.kind == "tim":  # precision-weighted bottom-up q and prior
            q_prec, p_prec = T.exp(-2 * u["qz_logsd"]), T.exp(-2 * d["pz_logsd"])
            prec = q_prec + p_prec
            mean = (p_prec * d["pz_mean"] + q_prec * u["qz_mean"]) / prec
            return (*self._sample(mean, -0.5 * T.log(prec), eps, None, w), mean)
        context = u["up_context"] + d["down_context"] if self.q.has_context else None
        mean = u["qz_mean"] + d["rz_mean"]
        return (*self._sample(mean, u["qz_logsd"] + d["rz_logsd"], eps, context, w), mean)

    def _made(self, z, d, w):
        mean, logsd = self.prior_net(z, d["prior_context"], w)
        return 0.1 * mean, 0.1 * logsd

    def _prior(self, z, d, w):
        """Elementwise log p(z), and the z the decoder sees (diag2 rescales it)."""
        if self.cfg.prior == "made":
            mean, logsd = self._made(z, d, w)
            return gaussian_diag_logps(z, mean, 2 * logsd), z
        if self.cfg.prior == "diag2":
            return gaussian_diag_logps(z, 0, 0), d["pz_mean"] + z * T.exp(d["pz_logsd"])
        return gaussian_diag_logps(z, d["pz_mean"], 2 * d["pz_logsd"]), z

    def _decode(self, x, h, z, w):
        h = T.concatenate([h, z], axis=1)
        if self.downsample:
            x = self.down_conv3(x, w) if self.resample_convs else upsample_nn2(x)
        return x + 0.1 * self.down_conv2(self.nl(h), w)

    def _down_parts(self, x, w):
        return self.down_parts.split(self.down_conv1(self.nl(x), w))

    def down(self, x, u, eps, w):
        """Top-down block during inference; returns its output, the elementwise KL and the
        mean of the posterior's Gaussian."""
        d = self._down_parts(x, w)
        z, logq, mean = self._posterior(d, u, eps, w)
        logp, z = self._prior(z, d, w)
        return self._decode(x, d["h"], z, w), logq - logp, mean

    def generate(self, x, eps, w):
        """Top-down block when sampling: ``z`` from the prior, driven by noise ``eps``."""
        d = self._down_parts(x, w)
        return self._decode(x, d["h"], self._prior_sample(d, eps, w), w)

    def reconstruct(self, x, u, eps, prior_eps, from_posterior, w):
        """Top-down block with ``z`` from the posterior where ``from_posterior`` (a 0/1
        scalar) is 1, else from the prior with noise ``prior_eps``."""
        d = self._down_parts(x, w)
        z_q = self._prior(self._posterior(d, u, eps, w)[0], d, w)[1]  # as the decoder sees it
        z = ifelse(from_posterior, z_q, self._prior_sample(d, prior_eps, w))
        return self._decode(x, d["h"], z, w)

    def _prior_sample(self, d, eps, w):
        if self.cfg.prior == "made":
            return self._sample_made(d, eps, w)
        return d["pz_mean"] + eps * T.exp(d["pz_logsd"])

    def _sample_made(self, d, eps, w):
        """Exact ancestral sample of the autoregressive prior ``z = m(z) + eps * exp(s(z))``.

        ``m, s`` at a position depend only on earlier positions (raster, then channel), so
        the fixed-point iteration fixes at least one more position per step and reaches the
        unique fixed point in at most ``n_z*H*W`` steps; it stops as soon as z is unchanged.
        """
        def step(z):
            mean, logsd = self._made(z, d, w)
            z_new = mean + eps * T.exp(logsd)
            return z_new, theano.scan_module.until(T.all(T.eq(z_new, z)))

        n_steps = eps.shape[1] * eps.shape[2] * eps.shape[3] + 1
        zs, _ = theano.scan(step, outputs_info=[T.zeros_like(eps)], n_steps=n_steps)
        return zs[-1]


class ResNetVAE:
    """The IAF ResNet VAE for a `ModelConfig`; ``seed`` draws the initial weights and,
    with `noise`, every posterior sample (docs/model.md §9). ``draw_weights=False`` leaves
    the weights at zero, for a model whose weights are then loaded (drawing Table 3's
    42.7M takes a second)."""

    def __init__(self, config=ModelConfig(), seed=0, draw_weights=True):
        self.config = cfg = config
        self.seed = seed
        rng = np.random.RandomState(seed) if draw_weights else None
        self.nl = nonlinearity(cfg.nl)
        self.shape_x = (cfg.shape_x[0],) + cfg.image_size
        p = OrderedDict()  # parameter name -> initial value, filled by the layers
        if cfg.px == "logistic":
            p["logsd_x"] = np.float32(0.0)
        channels = cfg.shape_x[0]
        self.x_enc = Conv2d(p, rng, "x_enc", channels, cfg.n_h1, cfg.kernel_x, downsample=2)
        self.x_dec = Conv2d(p, rng, "x_dec", cfg.n_h1, channels, cfg.kernel_x, upsample=2)
        self.layers = OrderedDict()  # (i, j) -> layer, bottom-up order
        for i, depth in enumerate(cfg.depths):
            for j in range(depth):
                self.layers[i, j] = VAELayer(p, rng, self._layer_name(i, j), cfg,
                                             downsample=i > 0 and j == 0)
        p["h_top"] = np.zeros(cfg.n_h1, floatX)
        self.params = FlatParameters.from_values(p, "params")
        self.avg_params = self.params.like("avg_params")  # their Polyak averages
        masks = {conv.w_name: conv.mask for conv in self.masked_convs}
        self.optimiser = opt = AdaMaxPolyak(self.params, self.avg_params, masks, cfg.alpha,
                                            cfg.beta1, cfg.beta2)
        shared = [self.params.shared, self.avg_params.shared, opt.m, opt.u, opt.keep]
        key = {"config": cfg.as_dict(), "custom_ops": [Conv2d.custom_ops, opt.custom_op]}
        self._cache = FunctionCache(key, [Path(layers.__file__).parent, Path(__file__).parent],
                                    {var.name: var for var in shared})
        self._compiled = {}

    def _layer_name(self, i, j):
        sharing = self.config.weightsharing
        if sharing == "all":
            return f"[sharedw]{i}_{j}[/sharedw]"
        if sharing:  # 'acrosslevels', and by the original's slip also 'withinlevel'
            return f"[sharedw]{i}[/sharedw]_{j}"
        return f"{i}_{j}"

    @property
    def masked_convs(self):
        return [conv for layer in self.layers.values() for conv in layer.masked_convs]

    @property
    def bits_per_nat(self):
        """Nats per image to bits per dimension (the padded image's, docs/model.md §8)."""
        return 1.0 / (np.prod(self.shape_x) * math.log(2.0))

    def latent_shapes(self):
        """Shape ``(n_z, height, width)`` of each layer's z, in layer order."""
        _, height, width = self.shape_x
        return [(self.config.n_z, height // 2 ** (i + 1), width // 2 ** (i + 1))
                for i, _ in self.layers]

    def noise(self, purpose, step, positions):
        """Standard-normal noise, one array per layer, for the images at ``positions`` at
        ``step`` (the places and steps of docs/model.md §9)."""
        return image_noise(self.latent_shapes(), self.seed, purpose, step, positions)

    # -- graphs ------------------------------------------------------------------------
    def _input(self, x):
        """uint8 images -> the floats every likelihood models, padded by pad_x (§1)."""
        xf = T.clip((T.cast(x, floatX) + 0.5) / 256.0, 0, 1)
        pad = self.config.pad_x
        if pad:
            n, c, height, width = xf.shape
            padded = T.zeros((n, c, height + 2 * pad, width + 2 * pad), dtype=floatX)
            xf = T.set_subtensor(padded[:, :, pad:-pad, pad:-pad], xf)
        return xf

    def _top(self, n, w):
        _, height, width = self.shape_x
        factor = 2 ** len(self.config.depths)
        return T.tile(w["h_top"].dimshuffle("x", 0, "x", "x"),
                      (n, 1, height // factor, width // factor))

    def _likelihood_mean(self, h, w):
        out = 0.1 * self.x_dec(self.nl(h), w)
        if self.config.px == "logistic":
            return T.clip(out + 0.5, 1 / 512.0, 1 - 1 / 512.0)
        return T.clip(T.nnet.sigmoid(out), 1e-7, 1 - 1e-7)

    def _kl_term(self, kl):
        """A layer's KL as the objective counts it (docs/model.md §8): per image, or with
        free bits one number for the minibatch (per feature map, batch mean, floored)."""
        kl_min = self.config.kl_min
        if kl_min > 0:
            per_map = kl.sum(axis=(2, 3)).mean(axis=0)
            return T.maximum(np.float32(kl_min), per_map).sum()
        return kl.sum(axis=(1, 2, 3))

    def _bottom_up(self, x, eps, w):
        """The input as the likelihood models it, and each layer's parts for the top-down
        pass (with z sampled there for bottom-up posteriors)."""
        xf = self._input(x)
        h, ups = self.x_enc(xf - 0.5, w), OrderedDict()
        for (key, layer), e in zip(self.layers.items(), eps):
            h, ups[key] = layer.up(h, e, w)
        return xf, ups

    def _inference(self, x, eps, w):
        """The pass that evaluation and training take: ``(xf, likelihood mean, per-layer
        elementwise KL, per-layer mean of the posterior's Gaussian)``."""
        xf, ups = self._bottom_up(x, eps, w)
        h, kls, means = self._top(x.shape[0], w), OrderedDict(), OrderedDict()
        for (key, layer), e in reversed(list(zip(self.layers.items(), eps))):
            h, kls[key], means[key] = layer.down(h, ups[key], e, w)
        return xf, self._likelihood_mean(h, w), kls, means

    def _graph(self, x, eps, w):
        """Per-image costs of minibatch ``x`` (uint8) with posterior noise ``eps`` (one
        tensor per layer) under parameters ``w`` (docs/model.md §7, §8)."""
        cfg = self.config
        xf, mean, kls, _ = self._inference(x, eps, w)
        if cfg.px == "logistic":
            logpx = discretized_logistic_logps(xf, mean, w["logsd_x"]).sum(axis=(1, 2, 3))
        else:
            logpx = bernoulli_logps(xf, mean).sum(axis=(1, 2, 3))
        kl_total = sum(kl.sum(axis=(1, 2, 3)) for kl in kls.values())
        kl_term = sum(self._kl_term(kl) for kl in kls.values())
        bits = np.float32(self.bits_per_nat)
        results = OrderedDict((f"cost_z{i:03d}_{j:03d}", kl.sum(axis=(1, 2, 3)))
                              for (i, j), kl in kls.items())
        # The original reports bits/dim for the logistic likelihood and nats for Bernoulli.
        results["cost"] = -(logpx - kl_term) * (bits if cfg.px == "logistic" else 1)
        results["cost_x"] = -logpx
        results["elbo"] = -(logpx - kl_total) * bits
        results["log_weight"] = logpx - kl_total
        return results

    def _image(self, likelihood_mean):
        """uint8 images from the likelihood's mean, without the padding."""
        image = (256.0 * likelihood_mean).astype("uint8")
        pad = self.config.pad_x
        return image[:, :, pad:-pad, pad:-pad] if pad else image

    def _sample_graph(self, eps, w):
        h = self._top(eps[0].shape[0], w)
        for layer, e in reversed(list(zip(self.layers.values(), eps))):
            h = layer.generate(h, e, w)
        return self._image(self._likelihood_mean(h, w))

    def _reconstruction_graph(self, x, eps, prior_eps, from_posterior, w):
        _, ups = self._bottom_up(x, eps, w)
        h = self._top(x.shape[0], w)
        for k, ((key, layer), e, p) in reversed(list(enumerate(zip(self.layers.items(), eps,
                                                                    prior_eps)))):
            h = layer.reconstruct(h, ups[key], e, p, from_posterior[k], w)
        return self._image(self._likelihood_mean(h, w))

    def _inputs(self):
        """Symbolic inputs: a uint8 minibatch and one noise tensor per layer."""
        return T.tensor4("x", dtype="uint8"), [T.tensor4(f"eps{k}") for k in range(len(self.layers))]

    def _function(self, name, build):
        """``(function, extra)`` from ``build()``, compiled once (and cached on disk)."""
        if name not in self._compiled:
            self._compiled[name] = self._cache.get(name, build)
        return self._compiled[name]

    # -- public API --------------------------------------------------------------------
    def data_init(self, x, eps):
        """Data-dependent init of every conv's ``s`` and ``b`` from batch ``x`` with
        posterior noise ``eps`` (docs/model.md §2). Returns the names of the convolutions
        skipped because a channel had std 0."""
        def build():
            xs, es = self._inputs()
            w = DataInit(self.params)
            self._graph(xs, es, w)
            outputs = [e for _, s, b, ok in w.records for e in (s, b, ok)]
            names = [(conv.s_name, conv.b_name, conv.name) for conv, _, _, _ in w.records]
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
        self.params.set_values(found)
        self.avg_params.set_buffer(self.params.buffer)
        return skipped

    def gradient(self, x, eps):
        """Per-image cost of minibatch ``x`` with posterior noise ``eps``, and the flat
        vector ``[gradient of the summed cost, summed cost, 0, 0]`` (see
        `AdaMaxPolyak.flat_gradient`): valid until the next call."""
        def build():
            xs, es = self._inputs()
            cost = self._graph(xs, es, self.params)["cost"]
            total = cost.sum()
            grads = self.optimiser.gradients(total)
            outputs = [cost, total] + [theano.Out(g, borrow=True) for g in grads]
            return theano.function([xs] + es, outputs), None
        f = self._function("gradient", build)[0]
        self.optimiser.place_gradient_outputs(f.output_storage[2:])
        cost, total, *grads = f(x, *eps)
        return cost, self.optimiser.flat_gradient(grads, total)

    def apply_gradient(self, flat):
        """One AdaMax step with a flat gradient from `gradient` (or a sum of them); False
        if anything in it is not finite, in which case nothing changed."""
        def build():
            return self.optimiser.update_function(), None
        return bool(self._function("update", build)[0](flat))

    def train_step(self, x, eps):
        """One AdaMax step on minibatch ``x`` with posterior noise ``eps``; returns the
        per-image cost (before the step) and whether the step was applied: if the cost or
        a gradient is not finite, nothing is updated and the caller decides what to do."""
        cost, flat = self.gradient(x, eps)
        return cost, self.apply_gradient(flat)

    def evaluate(self, x, eps):
        """Per-image ``cost``, ``cost_x``, per-layer KL ``cost_z*``, ``elbo`` and
        ``log_weight`` with the Polyak-averaged weights and posterior noise ``eps``."""
        def build():
            xs, es = self._inputs()
            results = self._graph(xs, es, self.avg_params)
            return theano.function([xs] + es, list(results.values())), list(results)
        f, keys = self._function("eval", build)
        return OrderedDict(zip(keys, f(x, *eps)))

    def decode(self, eps):
        """uint8 images from noise (averaged weights): ancestral sampling of the prior.
        Noise scaled by a temperature ``t`` samples at that temperature."""
        def build():
            _, es = self._inputs()
            return theano.function(es, self._sample_graph(es, self.avg_params)), None
        return self._function("decode", build)[0](*eps)

    def reconstruct(self, x, eps, prior_eps, from_posterior):
        """uint8 images decoded from ``x`` with each layer's z from the posterior (noise
        ``eps``) where ``from_posterior`` (a 0/1 flag per layer, in layer order) is 1, and
        from the prior (noise ``prior_eps``) elsewhere (averaged weights)."""
        def build():
            xs, es = self._inputs()
            ps = [T.tensor4(f"prior_eps{k}") for k in range(len(self.layers))]
            flags = T.bvector("from_posterior")
            images = self._reconstruction_graph(xs, es, ps, flags, self.avg_params)
            return theano.function([xs] + es + ps + [flags], images), None
        f = self._function("reconstruct", build)[0]
        return f(x, *eps, *prior_eps, np.asarray(from_posterior, np.int8))

    def latents(self, x, eps):
        """Per layer (in layer order): the mean of the posterior's Gaussian for every unit,
        ``(N, n_z*h*w)``, and the KL of every feature map, ``(N, n_z)`` (averaged weights)."""
        def build():
            xs, es = self._inputs()
            _, _, kls, means = self._inference(xs, es, self.avg_params)
            outputs = [v for key in self.layers
                       for v in (means[key].flatten(2), kls[key].sum(axis=(2, 3)))]
            return theano.function([xs] + es, outputs), None
        outputs = self._function("latents", build)[0](x, *eps)
        return list(zip(outputs[::2], outputs[1::2]))

    def get_weights(self, averaged=True):
        return (self.avg_params if averaged else self.params).values()

    def set_weights(self, values, complete=True, which=("params", "avg_params"), source=None):
        """Load a name -> array dict into the parameters (and their averages).

        Names in ``values`` the model does not have are ignored, as by the original; a
        parameter missing from ``values`` is an error unless ``complete=False``. An error
        says which model options the weights (from file ``source``) seem to differ in.
        """
        shapes = self.params.shapes
        missing = [k for k in shapes if k not in values]
        wrong = [k for k in shapes if k in values and np.shape(values[k]) != shapes[k]]
        if wrong or (missing and complete):
            raise ConfigError(mismatch_message(values, shapes, source))
        for target in which:
            getattr(self, target).set_values(values)
        return missing

    def training_state(self):
        """Everything a step changes, as flat arrays (copies)."""
        return {"params": self.params.buffer.copy(), "avg_params": self.avg_params.buffer.copy(),
                **self.optimiser.state()}

    def set_training_state(self, arrays):
        self.params.set_buffer(arrays["params"])
        self.avg_params.set_buffer(arrays["avg_params"])
        self.optimiser.set_state(arrays)
