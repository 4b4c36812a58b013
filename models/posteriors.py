"""The kinds of posterior q(z|x) and prior p(z) of a stochastic layer (docs/model.md §6).

Each kind is a small object that names the channels it needs from the layer's bottom-up
(``up_parts``) and top-down (``down_parts``) convolutions and computes its part of the
layer from them; `VAELayer` calls the same methods whatever the kind.
"""
from layers.distributions import gaussian_diag_logps
from layers.iaf import IAFNetwork, MaskedResNet, iaf_step
from layers.masked import MaskedConv2d
from layers.runtime.backend import T, theano


def gaussian_sample(mean, logsd, eps):
    """``z = mean + exp(logsd) * eps`` and its elementwise ``log N(z; mean, exp(2 logsd))``."""
    z = mean + T.exp(logsd) * eps
    return z, gaussian_diag_logps(z, mean, 2 * logsd)


# -- priors ----------------------------------------------------------------------------
class DiagPrior:
    """``diag``: ``p(z) = N(pz_mean, exp(2 pz_logsd))``, from the top-down convolution."""

    def __init__(self, n_z):
        self.down_parts = {"pz_mean": n_z, "pz_logsd": n_z}
        self.convs = []

    def log_density(self, z, down, params):
        """Elementwise log p(z), and the z the decoder sees."""
        return gaussian_diag_logps(z, down["pz_mean"], 2 * down["pz_logsd"]), z

    def sample(self, down, eps, params):
        """The z the decoder sees, sampled with noise ``eps``."""
        return down["pz_mean"] + eps * T.exp(down["pz_logsd"])


class Diag2Prior(DiagPrior):
    """``diag2``: ``p(z) = N(0, 1)``, and the decoder sees ``pz_mean + exp(pz_logsd) * z``."""

    def log_density(self, z, down, params):
        return gaussian_diag_logps(z, 0, 0), down["pz_mean"] + z * T.exp(down["pz_logsd"])


class MadePrior:
    """``made``: an IAF network ``{name}_prior_conv1`` with the context ``prior_context``
    gives ``(m, s)`` and ``p(z) = N(0.1 m, exp(2 * 0.1 s))``, autoregressively in z."""

    def __init__(self, initial, rng, name, cfg):
        self.network = IAFNetwork(initial, rng, name + "_prior_conv1", cfg.n_z,
                                  cfg.depth_ar * [cfg.n_h2], [cfg.n_z, cfg.n_z], cfg.kernel_h,
                                  nl=cfg.nl)
        self.down_parts = {"prior_context": cfg.n_h2}
        self.convs = self.network.convs

    def _mean_logsd(self, z, down, params):
        mean, logsd = self.network(z, down["prior_context"], params)
        return 0.1 * mean, 0.1 * logsd

    def log_density(self, z, down, params):
        mean, logsd = self._mean_logsd(z, down, params)
        return gaussian_diag_logps(z, mean, 2 * logsd), z

    def sample(self, down, eps, params):
        """Exact ancestral sample of ``z = m(z) + eps * exp(s(z))``.

        ``m, s`` at a position depend only on earlier positions (raster, then channel), so
        the fixed-point iteration fixes at least one more position per step and reaches the
        unique fixed point in at most ``n_z*H*W`` steps; it stops as soon as z is unchanged.
        """
        def step(z):
            mean, logsd = self._mean_logsd(z, down, params)
            z_new = mean + eps * T.exp(logsd)
            return z_new, theano.scan_module.until(T.all(T.eq(z_new, z)))

        n_steps = eps.shape[1] * eps.shape[2] * eps.shape[3] + 1
        zs, _ = theano.scan(step, outputs_info=[T.zeros_like(eps)], n_steps=n_steps)
        return zs[-1]


def make_prior(initial, rng, name, cfg):
    if cfg.prior == "made":
        return MadePrior(initial, rng, name, cfg)
    return Diag2Prior(cfg.n_z) if cfg.prior == "diag2" else DiagPrior(cfg.n_z)


# -- the flow of a posterior -----------------------------------------------------------
class MaskedConvFlow:
    """The flow network of ``iaf1``/``iaf2`` posteriors without ``_nl``/``_deep``: one
    masked conv whose ``2 n_z`` outputs (iaf2) interleave mean (even channels) and log-sd
    (odd channels)."""

    def __init__(self, initial, rng, name, n_z, n_outputs, kernel):
        self.n_outputs = n_outputs
        self.conv = MaskedConv2d(initial, rng, name, n_z, n_outputs * n_z, kernel)
        self.convs = [self.conv]

    def __call__(self, z, context, params):
        out = self.conv(z, params)
        return [out] if self.n_outputs == 1 else [out[:, ::2], out[:, 1::2]]


def flow_networks(initial, rng, name, cfg):
    """The networks of the posterior's flow steps, one per step (none without a flow)."""
    kind = cfg.parsed_posterior
    if not kind.has_flow:
        return []
    outputs = [cfg.n_z] if kind.kind == "iaf1" else [cfg.n_z, cfg.n_z]
    if kind.network == "":
        return [MaskedConvFlow(initial, rng, name + "_posterior_conv1", cfg.n_z, len(outputs),
                               cfg.kernel_h)]
    if kind.network == "deep":
        return [MaskedResNet(initial, rng, name + "_deepiaf", cfg.depth_ar, cfg.n_z, cfg.n_h2,
                             outputs, cfg.kernel_h, nl=cfg.nl)]
    flips = (False, True) if kind.network == "nl2" else (False,)
    return [IAFNetwork(initial, rng, f"{name}_posterior_conv{k + 1}", cfg.n_z,
                       cfg.depth_ar * [cfg.n_h2], outputs, cfg.kernel_h, flipmask=flip,
                       nl=cfg.nl)
            for k, flip in enumerate(flips)]


# -- posteriors ------------------------------------------------------------------------
class _FlowPosterior:
    """A Gaussian sample, then the flow steps; with the flow's context when it has a
    network. ``up_extra``: what the bottom-up block appends to its ``h`` (none here)."""

    up_extra = {}

    def __init__(self, initial, rng, name, cfg):
        self.flow = flow_networks(initial, rng, name, cfg)
        self.convs = [conv for network in self.flow for conv in network.convs]
        self.context = cfg.n_h2 if cfg.parsed_posterior.has_context else 0

    def _sample(self, mean, logsd, eps, context, params):
        z, logq = gaussian_sample(mean, logsd, eps)
        for network in self.flow:
            z, logq = iaf_step(z, logq, *network(z, context, params))
        return z, logq


class BottomUpPosterior(_FlowPosterior):
    """``up_*``: z sampled in the bottom-up pass from ``N(qz_mean, exp(2 qz_logsd))``, the
    flow's context ``up_context``; the bottom-up block then sees ``h`` with z."""

    def __init__(self, initial, rng, name, cfg):
        super().__init__(initial, rng, name, cfg)
        self.up_parts = {"qz_mean": cfg.n_z, "qz_logsd": cfg.n_z, "up_context": self.context}
        self.down_parts = {}
        self.up_extra = {"z": cfg.n_z}

    def bottom_up(self, up, eps, params):
        """Adds to the bottom-up parts ``up`` what the posterior computes in that pass."""
        up["z"], up["logq"] = self._sample(up["qz_mean"], up["qz_logsd"], eps,
                                           up.get("up_context"), params)

    def top_down(self, down, up, eps, params):
        """``z ~ q(z|x)``, elementwise log q, and the mean of q's Gaussian before the flow."""
        return up["z"], up["logq"], up["qz_mean"]


class TopDownPosterior(_FlowPosterior):
    """``down_*``: z sampled in the top-down pass from
    ``N(qz_mean + rz_mean, exp(2 qz_logsd + 2 rz_logsd))``, the flow's context
    ``up_context + down_context``."""

    def __init__(self, initial, rng, name, cfg):
        super().__init__(initial, rng, name, cfg)
        self.up_parts = {"qz_mean": cfg.n_z, "qz_logsd": cfg.n_z, "up_context": self.context}
        self.down_parts = {"rz_mean": cfg.n_z, "rz_logsd": cfg.n_z,
                           "down_context": self.context}

    def bottom_up(self, up, eps, params):
        pass

    def top_down(self, down, up, eps, params):
        context = up["up_context"] + down["down_context"] if self.context else None
        mean = up["qz_mean"] + down["rz_mean"]
        return (*self._sample(mean, up["qz_logsd"] + down["rz_logsd"], eps, context, params),
                mean)


class PrecisionWeightedPosterior:
    """``down_tim``: q is the precision-weighted combination of the bottom-up
    ``N(qz_mean, exp(2 qz_logsd))`` and the ``diag`` prior; no flow. The bottom-up block
    sees ``h`` with ``qz_mean``."""

    def __init__(self, initial, rng, name, cfg):
        self.up_parts = {"qz_mean": cfg.n_z, "qz_logsd": cfg.n_z}
        self.down_parts = {}
        self.up_extra = {"qz_mean": cfg.n_z}
        self.convs = []

    def bottom_up(self, up, eps, params):
        pass

    def top_down(self, down, up, eps, params):
        q_precision, p_precision = T.exp(-2 * up["qz_logsd"]), T.exp(-2 * down["pz_logsd"])
        precision = q_precision + p_precision
        mean = (p_precision * down["pz_mean"] + q_precision * up["qz_mean"]) / precision
        return (*gaussian_sample(mean, -0.5 * T.log(precision), eps), mean)


def make_posterior(initial, rng, name, cfg):
    kind = cfg.parsed_posterior
    if kind.kind == "tim":
        return PrecisionWeightedPosterior(initial, rng, name, cfg)
    if kind.where == "up":
        return BottomUpPosterior(initial, rng, name, cfg)
    return TopDownPosterior(initial, rng, name, cfg)
