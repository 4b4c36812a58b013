"""The ResNet VAE with inverse autoregressive flow (the original's ``cvae1``), as a graph.

`ResNetVAE` stacks `VAELayer`s in levels (docs/model.md §7) and says what is computed
from a minibatch, its posterior noise and a dict of symbolic parameters: the objective and
evaluation outputs (§8), samples from the prior, and reconstructions. It holds the initial
value of every parameter; `models.trainer.Trainer` compiles its graphs.
"""
import math
from collections import OrderedDict

import numpy as np
from layers.conv import Conv2d
from layers.distributions import bernoulli_logps, discretized_logistic_logps
from layers.nonlinearities import nonlinearity
from layers.runtime.backend import T, floatX

from .config import ModelConfig
from .names import layer_key, layer_name
from .vae_layer import VAELayer


class ResNetVAE:
    """The IAF ResNet VAE for a `ModelConfig`. ``seed`` draws the initial weights
    (docs/model.md §9); ``draw_weights=False`` leaves them at zero, for a model whose
    weights are then loaded."""

    def __init__(self, config=ModelConfig(), seed=0, draw_weights=True):
        self.config = cfg = config
        self.seed = seed
        rng = np.random.RandomState(seed) if draw_weights else None
        self.nl = nonlinearity(cfg.nl)
        self.shape_x = (cfg.shape_x[0],) + cfg.image_size
        initial = OrderedDict()  # parameter name -> initial value, filled by the layers
        if cfg.px == "logistic":
            initial["logsd_x"] = np.float32(0.0)
        channels = cfg.shape_x[0]
        self.x_enc = Conv2d(initial, rng, "x_enc", channels, cfg.n_h1, cfg.kernel_x,
                            downsample=2)
        self.x_dec = Conv2d(initial, rng, "x_dec", cfg.n_h1, channels, cfg.kernel_x,
                            upsample=2)
        self.vae_layers = OrderedDict()  # (i, j) -> layer, bottom-up order
        for i, depth in enumerate(cfg.depths):
            for j in range(depth):
                self.vae_layers[i, j] = VAELayer(initial, rng,
                                                 layer_name(i, j, cfg.weightsharing), cfg,
                                                 downsample=i > 0 and j == 0)
        initial["h_top"] = np.zeros(cfg.n_h1, floatX)
        self.initial = initial

    @property
    def masked_convs(self):
        return [conv for layer in self.vae_layers.values() for conv in layer.masked_convs]

    @property
    def bits_per_nat(self):
        """Nats per image to bits per dimension (the padded image's, docs/model.md §8)."""
        return 1.0 / (np.prod(self.shape_x) * math.log(2.0))

    def latent_shapes(self):
        """Shape ``(n_z, height, width)`` of each layer's z, in layer order."""
        return [(self.config.n_z,) + self.config.level_size(i) for i, _ in self.vae_layers]

    # -- pieces ------------------------------------------------------------------------
    def _input(self, x):
        """uint8 images -> the floats every likelihood models, padded by pad_x (§1)."""
        xf = T.clip((T.cast(x, floatX) + 0.5) / 256.0, 0, 1)
        pad = self.config.pad_x
        if pad:
            n, c, height, width = xf.shape
            padded = T.zeros((n, c, height + 2 * pad, width + 2 * pad), dtype=floatX)
            xf = T.set_subtensor(padded[:, :, pad:-pad, pad:-pad], xf)
        return xf

    def _top(self, n, params):
        """The top of the top-down path: ``h_top`` tiled to the last level's size."""
        height, width = self.config.level_size(len(self.config.depths) - 1)
        return T.tile(params["h_top"].dimshuffle("x", 0, "x", "x"), (n, 1, height, width))

    def _likelihood_mean(self, h, params):
        out = 0.1 * self.x_dec(self.nl(h), params)
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

    def _bottom_up(self, x, eps, params):
        """The input as the likelihood models it, and each layer's parts for the top-down
        pass (with z sampled there for bottom-up posteriors)."""
        xf = self._input(x)
        h, ups = self.x_enc(xf - 0.5, params), OrderedDict()
        for (key, layer), e in zip(self.vae_layers.items(), eps):
            h, ups[key] = layer.up(h, e, params)
        return xf, ups

    def _image(self, likelihood_mean):
        """uint8 images from the likelihood's mean, without the padding."""
        image = (256.0 * likelihood_mean).astype("uint8")
        pad = self.config.pad_x
        return image[:, :, pad:-pad, pad:-pad] if pad else image

    # -- what is computed --------------------------------------------------------------
    def inference(self, x, eps, params):
        """The pass that evaluation and training take: ``(xf, likelihood mean, per-layer
        elementwise KL, per-layer mean of the posterior's Gaussian)``."""
        xf, ups = self._bottom_up(x, eps, params)
        h, kls, means = self._top(x.shape[0], params), OrderedDict(), OrderedDict()
        for (key, layer), e in reversed(list(zip(self.vae_layers.items(), eps))):
            h, kls[key], means[key] = layer.down(h, ups[key], e, params)
        return xf, self._likelihood_mean(h, params), kls, means

    def costs(self, x, eps, params):
        """Per-image costs of minibatch ``x`` (uint8) with posterior noise ``eps`` (one
        tensor per layer) under parameters ``params`` (docs/model.md §7, §8)."""
        cfg = self.config
        xf, mean, kls, _ = self.inference(x, eps, params)
        if cfg.px == "logistic":
            logpx = discretized_logistic_logps(xf, mean, params["logsd_x"]).sum(axis=(1, 2, 3))
        else:
            logpx = bernoulli_logps(xf, mean).sum(axis=(1, 2, 3))
        kl_total = sum(kl.sum(axis=(1, 2, 3)) for kl in kls.values())
        kl_term = sum(self._kl_term(kl) for kl in kls.values())
        bits = np.float32(self.bits_per_nat)
        results = OrderedDict((f"cost_z{layer_key(i, j)}", kl.sum(axis=(1, 2, 3)))
                              for (i, j), kl in kls.items())
        # The original reports bits/dim for the logistic likelihood and nats for Bernoulli.
        results["cost"] = -(logpx - kl_term) * (bits if cfg.px == "logistic" else 1)
        results["cost_x"] = -logpx
        results["elbo"] = -(logpx - kl_total) * bits
        results["log_weight"] = logpx - kl_total
        return results

    def samples(self, eps, params):
        """uint8 images from the prior, driven by noise ``eps`` (ancestral sampling)."""
        h = self._top(eps[0].shape[0], params)
        for layer, e in reversed(list(zip(self.vae_layers.values(), eps))):
            h = layer.generate(h, e, params)
        return self._image(self._likelihood_mean(h, params))

    def reconstructions(self, x, eps, prior_eps, from_posterior, params):
        """uint8 images decoded from ``x`` with layer k's z from the posterior (noise
        ``eps``) where ``from_posterior[k]`` is 1, else from the prior (``prior_eps``)."""
        _, ups = self._bottom_up(x, eps, params)
        h = self._top(x.shape[0], params)
        for k, ((key, layer), e, p) in reversed(list(enumerate(zip(self.vae_layers.items(),
                                                                    eps, prior_eps)))):
            h = layer.reconstruct(h, ups[key], e, p, from_posterior[k], params)
        return self._image(self._likelihood_mean(h, params))
