"""Every model option in one place: `ModelConfig`, the original's ``margs``.

Sacred's ``margs`` entry, the check for misspelled ``margs.`` keys (models/run/settings.py),
`ResNetVAE` and the benchmarks all derive from this dataclass: adding a field adds the
option everywhere.
"""
import dataclasses
from dataclasses import dataclass
from typing import Tuple, Union

from layers.nonlinearities import NONLINEARITIES

PRIORS = ("diag", "diag2", "made")
LIKELIHOODS = ("logistic", "bernoulli")
WEIGHTSHARING = (False, "all", "acrosslevels", "withinlevel")
DOWNSAMPLE_TYPES = ("nn", "conv")
OPTIMISERS = ("adamax",)
# Posterior names: {where}_{kind}[_{network}] (docs/model.md §6).
POSTERIOR_KINDS = {"up": ("diag", "iaf1", "iaf2", "iaf1_nl", "iaf2_nl"),
                   "down": ("diag", "iaf1", "iaf2", "iaf1_nl", "iaf2_nl", "iaf2_nl2",
                            "iaf1_deep", "iaf2_deep", "tim")}
POSTERIORS = tuple(f"{where}_{kind}" for where, kinds in POSTERIOR_KINDS.items()
                   for kind in kinds)


class ConfigError(ValueError):
    """An impossible model setting; the message says which and lists the valid choices."""


@dataclass(frozen=True)
class PosteriorName:
    """A posterior name parsed into its parts (docs/model.md §6)."""
    where: str    # 'up': z sampled bottom-up; 'down': top-down
    kind: str     # 'diag', 'iaf1' (mean-only steps), 'iaf2' (mean and scale), 'tim'
    network: str  # '' (one masked conv, or no flow), 'nl', 'nl2' (two networks), 'deep'

    @classmethod
    def parse(cls, name):
        where, kind, network = (name.split("_") + [""])[:3]
        return cls(where, kind, network)

    @property
    def has_context(self):
        """Its flow is a network that takes a context from the deterministic path."""
        return self.network != ""

    @property
    def has_flow(self):
        return self.kind in ("iaf1", "iaf2")


def _choice(what, value, valid):
    key = value.lower() if isinstance(value, str) else value
    if key not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid choices: "
                          f"{', '.join(map(str, valid))}")
    return key


def _positive(name, value):
    if int(value) != value or value < 1:
        raise ConfigError(f"{name}={value} must be a positive integer")
    return int(value)


@dataclass(frozen=True)
class ModelConfig:
    """The model's options and their defaults (the original's ``margs``).

    Names are matched case-insensitively and stored in lower case; an impossible setting
    raises `ConfigError` with one sentence naming it and the valid choices.
    """
    shape_x: Tuple[int, int, int] = (3, 32, 32)  # image channels, height, width
    depths: Tuple[int, ...] = (2, 2)  # stochastic layers per level
    n_h1: int = 160  # feature maps of the residual path
    n_h2: int = 160  # feature maps inside a layer
    n_z: int = 32  # latent feature maps per layer
    prior: str = "diag"  # one of PRIORS
    posterior: str = "down_diag"  # one of POSTERIORS
    px: str = "logistic"  # likelihood: one of LIKELIHOODS
    nl: str = "elu"  # nonlinearity: one of layers.NONLINEARITIES
    kernel_x: Tuple[int, int] = (5, 5)  # kernel of x_enc and x_dec
    kernel_h: Tuple[int, int] = (3, 3)  # kernel of the layers
    kl_min: float = 0.25  # free bits per feature map (nats); 0 = none
    optim: str = "adamax"  # the original's choice of optimiser; 'adamax' is its only one here
    alpha: float = 0.002  # AdaMax step size
    beta1: float = 0.1  # 1 - momentum of the gradient's mean
    beta2: float = 0.001  # 1 - decay of its max norm, and the Polyak averaging rate
    pad_x: int = 0  # zero-padding added around the images
    weightsharing: Union[bool, str] = False  # one of WEIGHTSHARING
    depth_ar: int = 1  # hidden layers of the IAF networks
    downsample_type: str = "nn"  # one of DOWNSAMPLE_TYPES

    def __post_init__(self):
        def normalise(name, value):
            object.__setattr__(self, name, value)
        for name in ("n_h1", "n_h2", "n_z"):
            normalise(name, _positive(name, getattr(self, name)))
        normalise("prior", _choice("prior", self.prior, PRIORS))
        normalise("posterior", _choice("posterior", self.posterior, POSTERIORS))
        normalise("px", _choice("px (likelihood)", self.px, LIKELIHOODS))
        normalise("nl", _choice("nonlinearity nl", self.nl, tuple(NONLINEARITIES)))
        normalise("downsample_type", _choice("downsample_type", self.downsample_type,
                                             DOWNSAMPLE_TYPES))
        normalise("optim", _choice("optim", self.optim, OPTIMISERS))
        normalise("weightsharing", _choice("weightsharing", self.weightsharing or False,
                                           WEIGHTSHARING))
        for name in ("kernel_x", "kernel_h"):
            kernel = tuple(int(k) for k in getattr(self, name))
            if len(kernel) != 2 or min(kernel) < 1 or not all(k % 2 for k in kernel):
                raise ConfigError(f"{name}={kernel}: kernels need two odd sizes, e.g. (3, 3)")
            normalise(name, kernel)
        depths = tuple(int(d) for d in self.depths)
        if not depths or min(depths) < 1:
            raise ConfigError(f"depths={list(depths)}: need at least one level, each with "
                              f">= 1 layer")
        normalise("depths", depths)
        normalise("shape_x", tuple(int(s) for s in self.shape_x))
        if int(self.depth_ar) != self.depth_ar or self.depth_ar < 0:
            raise ConfigError(f"depth_ar={self.depth_ar} must be a non-negative integer")
        if self.kl_min < 0:
            raise ConfigError(f"kl_min={self.kl_min} must be >= 0")
        if self.posterior == "down_tim" and self.prior != "diag":
            raise ConfigError("posterior 'down_tim' needs prior 'diag'")
        if (self.prior == "made" or "iaf" in self.posterior) \
                and self.n_h2 % self.n_z and self.n_z % self.n_h2:
            raise ConfigError(f"the masked IAF layers need n_h2={self.n_h2} and "
                              f"n_z={self.n_z} to divide one another")
        height, width = self.image_size
        factor = 2 ** len(depths)
        if height % factor or width % factor:
            raise ConfigError(f"{len(depths)} levels halve the image {len(depths)} times after "
                              f"the stride-2 input conv, so height and width must be multiples "
                              f"of {factor}; got {height}x{width}: use fewer levels")

    @property
    def image_size(self):
        """Height and width of the images the model sees (after padding)."""
        _, height, width = self.shape_x
        return height + 2 * self.pad_x, width + 2 * self.pad_x

    @property
    def parsed_posterior(self):
        return PosteriorName.parse(self.posterior)

    def level_size(self, level):
        """Height and width of the feature maps of ``level`` (0 is the first, at half the
        image's size: each level halves it again)."""
        height, width = self.image_size
        return height // 2 ** (level + 1), width // 2 ** (level + 1)

    def as_dict(self):
        """Plain JSON-able values (lists for tuples), as sacred and checkpoints hold them."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


__all__ = ["ConfigError", "ModelConfig", "PosteriorName", "POSTERIORS", "PRIORS", "LIKELIHOODS",
           "WEIGHTSHARING", "DOWNSAMPLE_TYPES", "OPTIMISERS"]
