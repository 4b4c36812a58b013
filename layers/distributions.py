"""Log-densities of the model: diagonal Gaussian, discretised logistic, Bernoulli (docs/model.md §6, §8)."""
import math

from .runtime.backend import T


def gaussian_diag_logps(z, mean, logvar):
    """Elementwise ``log N(z; mean, exp(logvar))``."""
    return -0.5 * (math.log(2 * math.pi) + logvar + T.sqr(z - mean) / T.exp(logvar))


def discretized_logistic_logps(x, mean, logscale, binsize=1 / 256.0):
    """Elementwise log-mass of the bin ``[floor(x/b)*b, +b)`` under Logistic(mean, exp(logscale)).

    As the original: no special edge bins (0 and 255 get no tail mass) and ``+1e-7`` inside
    the log, so the 256 masses sum to slightly less than 1 (docs/model.md §8).
    """
    scale = T.exp(logscale)
    u = (T.floor(x / binsize) * binsize - mean) / scale
    return T.log(T.nnet.sigmoid(u + binsize / scale) - T.nnet.sigmoid(u) + 1e-7)


def bernoulli_logps(x, p):
    """Elementwise ``x log p + (1-x) log(1-p)``."""
    return -T.nnet.binary_crossentropy(p, x)
