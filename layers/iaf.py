"""The IAF networks built from masked convolutions, and one IAF step (docs/model.md §4, §6)."""
from .conv import convolve_together
from .masked import MaskedConv2d
from .nonlinearities import nonlinearity
from .runtime.backend import T


def iaf_step(z, logq, mean, logsd=None):
    """One flow step (docs/model.md §6): ``z <- (z - 0.1 m) / exp(0.1 s)``,
    ``log q += 0.1 s``; a mean-only step (no ``logsd``) shifts ``z`` alone."""
    if logsd is None:
        return z - 0.1 * mean, logq
    return (z - 0.1 * mean) / T.exp(0.1 * logsd), logq + 0.1 * logsd


class IAFNetwork:
    """``ar_multiconv2d``: masked hidden convs with a context input, then masked outputs.

    Hidden layer i: ``MaskedConv2d(f"{name}_{i}", zerodiagonal=False)`` then the nonlinearity,
    with ``context`` added to the first hidden pre-activation. Outputs j:
    ``MaskedConv2d(f"{name}_out_{j}", zerodiagonal=True)``, one per entry of the list
    ``n_out``; returns their outputs as a list (docs/model.md §4).
    """

    def __init__(self, initial, rng, name, n_in, n_hidden, n_out, kernel, flipmask=False,
                 nl="elu"):
        sizes = [n_in] + list(n_hidden)
        self.nl = nonlinearity(nl)
        self.hidden = [MaskedConv2d(initial, rng, f"{name}_{i}", sizes[i], sizes[i + 1], kernel,
                                    zerodiagonal=False, flipmask=flipmask)
                       for i in range(len(n_hidden))]
        self.outputs = [MaskedConv2d(initial, rng, f"{name}_out_{j}", sizes[-1], n, kernel,
                                     zerodiagonal=True, flipmask=flipmask)
                        for j, n in enumerate(n_out)]

    @property
    def convs(self):
        return self.hidden + self.outputs

    def __call__(self, z, context, params):
        h = z
        for i, conv in enumerate(self.hidden):
            h = conv(h, params)
            if i == 0:
                h = h + context
            h = self.nl(h)
        return convolve_together(self.outputs, h, params)


class MaskedResNet:
    """``ar.resnet``: the deep IAF of the ``*_deep`` posteriors.

    ``{name}_input`` (masked, n_in -> n_h) plus context, then ``depth`` residual blocks
    ``h + 0.1 * conv2(nl(conv1(nl(h))))`` of masked n_h -> n_h convs ``{name}_{i}_conv{1,2}``,
    then masked outputs ``{name}_out_{j}``.
    """

    def __init__(self, initial, rng, name, depth, n_in, n_h, n_out, kernel, flipmask=False,
                 nl="elu"):
        self.nl = nonlinearity(nl)
        self.input = MaskedConv2d(initial, rng, f"{name}_input", n_in, n_h, kernel,
                                  zerodiagonal=False, flipmask=flipmask)
        # The original builds the blocks without passing flipmask on.
        self.blocks = [tuple(MaskedConv2d(initial, rng, f"{name}_{i}_conv{c}", n_h, n_h, (3, 3),
                                          zerodiagonal=False) for c in (1, 2))
                       for i in range(depth)]
        self.outputs = [MaskedConv2d(initial, rng, f"{name}_out_{j}", n_h, n, kernel,
                                     zerodiagonal=True, flipmask=flipmask)
                        for j, n in enumerate(n_out)]

    @property
    def convs(self):
        return [self.input] + [c for block in self.blocks for c in block] + self.outputs

    def __call__(self, z, context, params):
        h = self.input(z, params) + context
        for conv1, conv2 in self.blocks:
            h = h + 0.1 * conv2(self.nl(conv1(self.nl(h), params)), params)
        return convolve_together(self.outputs, h, params)
