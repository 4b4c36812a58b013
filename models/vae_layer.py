"""One stochastic layer of the ResNet VAE (docs/model.md §5, §6): a bottom-up and a
top-down residual block with a latent ``z`` between them."""
from layers.conv import Conv2d, avg_pool2, upsample_nn2
from layers.nonlinearities import nonlinearity
from layers.runtime.backend import T, ifelse

from .posteriors import make_posterior, make_prior


class ChannelLayout:
    """Named consecutive channel ranges of a convolution's output or input (docs/model.md §5).

    ``ChannelLayout(h=8, qz_mean=4, up_context=0)``: keyword order is channel order, and a
    part of size 0 is absent.
    """

    def __init__(self, **sizes):
        self.sizes = {name: n for name, n in sizes.items() if n}

    @property
    def n_channels(self):
        return sum(self.sizes.values())

    def slice(self, name):
        """The channels of part ``name``."""
        names = list(self.sizes)
        start = sum(self.sizes[n] for n in names[:names.index(name)])
        return slice(start, start + self.sizes[name])

    def split(self, h):
        """The parts of ``h`` by name (copies: the gradient of a split is one concatenation
        of the parts' gradients, where slices would each add theirs into a zero array)."""
        if len(self.sizes) == 1:
            return {name: h for name in self.sizes}
        parts = T.split(h, list(self.sizes.values()), len(self.sizes), axis=1)
        return dict(zip(self.sizes, parts))

    def join(self, parts):
        """The tensor whose channels are this layout's parts, taken from ``parts`` by name."""
        tensors = [parts[name] for name in self.sizes]
        return tensors[0] if len(tensors) == 1 else T.concatenate(tensors, axis=1)


class VAELayer:
    """One ResNet-VAE layer ``{i}_{j}``; ``downsample`` halves the resolution."""

    def __init__(self, initial, rng, name, cfg, downsample):
        self.cfg, self.downsample = cfg, downsample
        self.resample_convs = downsample and cfg.downsample_type == "conv"
        self.nl = nonlinearity(cfg.nl)
        n_h1, n_h2, n_z, kernel = cfg.n_h1, cfg.n_h2, cfg.n_z, cfg.kernel_h
        # Construction order follows the original, so a seed draws the same initial weights.
        self.prior = make_prior(initial, rng, name, cfg)
        self.posterior = make_posterior(initial, rng, name, cfg)
        self.up_parts = ChannelLayout(h=n_h2, **self.posterior.up_parts)
        self.down_parts = ChannelLayout(h=n_h2, **self.prior.down_parts,
                                        **self.posterior.down_parts)
        self.up_input = ChannelLayout(h=n_h2, **self.posterior.up_extra)
        self.decoder_input = ChannelLayout(h=n_h2, z=n_z)
        ds = 2 if downsample else 1
        if self.resample_convs:
            self.up_conv3 = Conv2d(initial, rng, name + "_up_conv3", n_h1, n_h1, kernel,
                                   downsample=2)
            self.down_conv3 = Conv2d(initial, rng, name + "_down_conv3", n_h1, n_h1, kernel,
                                     upsample=2)
        self.up_conv1 = Conv2d(initial, rng, f"{name}_up_conv1_{ds}", n_h1,
                               self.up_parts.n_channels, kernel, downsample=ds)
        self.up_conv2 = Conv2d(initial, rng, name + "_up_conv2", self.up_input.n_channels,
                               n_h1, kernel)
        self.down_conv1 = Conv2d(initial, rng, name + "_down_conv1", n_h1,
                                 self.down_parts.n_channels, kernel)
        self.down_conv2 = Conv2d(initial, rng, f"{name}_down_conv2_{ds}",
                                 self.decoder_input.n_channels, n_h1, kernel, upsample=ds)
        # The masked convolutions of the prior and the flow (re-masked after each step).
        self.masked_convs = self.prior.convs + self.posterior.convs

    @property
    def convs(self):
        """Every unmasked convolution of the layer."""
        resample = [self.up_conv3, self.down_conv3] if self.resample_convs else []
        return resample + [self.up_conv1, self.up_conv2, self.down_conv1, self.down_conv2]

    def up(self, x, eps, params):
        """Bottom-up block; returns its output and the parts the top-down block uses."""
        up = self.up_parts.split(self.up_conv1(self.nl(x), params))
        self.posterior.bottom_up(up, eps, params)
        if self.downsample:
            x = self.up_conv3(x, params) if self.resample_convs else avg_pool2(x)
        return x + 0.1 * self.up_conv2(self.nl(self.up_input.join(up)), params), up

    def _top_down_parts(self, x, params):
        return self.down_parts.split(self.down_conv1(self.nl(x), params))

    def _decode(self, x, down, z, params):
        h = self.decoder_input.join({"h": down["h"], "z": z})
        if self.downsample:
            x = self.down_conv3(x, params) if self.resample_convs else upsample_nn2(x)
        return x + 0.1 * self.down_conv2(self.nl(h), params)

    def down(self, x, up, eps, params):
        """Top-down block during inference; returns its output, the elementwise KL and the
        mean of the posterior's Gaussian."""
        down = self._top_down_parts(x, params)
        z, logq, mean = self.posterior.top_down(down, up, eps, params)
        logp, z = self.prior.log_density(z, down, params)
        return self._decode(x, down, z, params), logq - logp, mean

    def generate(self, x, eps, params):
        """Top-down block when sampling: ``z`` from the prior, driven by noise ``eps``."""
        down = self._top_down_parts(x, params)
        return self._decode(x, down, self.prior.sample(down, eps, params), params)

    def reconstruct(self, x, up, eps, prior_eps, from_posterior, params):
        """Top-down block with ``z`` from the posterior where ``from_posterior`` (a 0/1
        scalar) is 1, else from the prior with noise ``prior_eps``."""
        down = self._top_down_parts(x, params)
        z_posterior = self.posterior.top_down(down, up, eps, params)[0]
        z_seen = self.prior.log_density(z_posterior, down, params)[1]  # as the decoder sees it
        z = ifelse(from_posterior, z_seen, self.prior.sample(down, prior_eps, params))
        return self._decode(x, down, z, params)
