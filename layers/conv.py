"""Weight-normalised convolution with the pad channel (docs/model.md §2), and 2x resampling.

A layer is a small object: its constructor puts its parameters' initial values into the
model's ``name -> array`` dict (the model then stores them all in one flat buffer, see
`layers.parameters`); calling it with an input and *a* dict of symbolic parameters (the
trained weights, their Polyak averages, or a `DataInit`) applies it.
"""
import numpy as np

from .backend import CUSTOM_OPS, T, floatX
from .gemm_conv import gemm_conv2d
from .nonlinearities import ELU, plain_elu
from .weight_norm import weight_norm


def split_shared_name(name):
    """Names of the per-layer and of the (possibly shared) weight parameters.

    The original marks weight sharing inside a layer name: ``'[sharedw]0_1[/sharedw]_up_conv2'``
    is layer ``0_1_up_conv2`` whose weight is stored as ``[s]_up_conv2`` (docs/model.md §7).
    """
    if "[sharedw]" not in name:
        return name, name
    head, rest = name.split("[sharedw]")
    index, tail = rest.split("[/sharedw]")
    return head + index + tail, head + "[s]" + tail


class DataInit(dict):
    """A parameter dict that switches every convolution to data-dependent initialisation.

    Each convolution normalises its output by its own batch statistics and records the
    scale ``s`` and bias ``b`` that give that normalisation (docs/model.md §2, §3). Compiling the
    recorded expressions gives all of them from one call on the init batch.
    """

    def __init__(self, params):
        super().__init__(params)
        self.records = []  # (conv, s, b, ok) with ok = no channel had std 0

    def normalise(self, conv, h, target_std, eps):
        std = h.std(axis=(0, 2, 3))
        ok = T.all(T.neq(std, 0))
        scale = std / target_std + eps
        h_scaled = h / scale.dimshuffle("x", 0, "x", "x")
        mean = h_scaled.mean(axis=(0, 2, 3))
        self.records.append((conv, -T.log(scale) / 3, -mean, ok))
        return T.switch(ok, h_scaled - mean.dimshuffle("x", 0, "x", "x"), h)


def depth_to_space(h, factor):
    """(N, C*f*f, H, W) -> (N, C, H*f, W*f), channel blocks become f x f pixel blocks."""
    n, c, height, width = h.shape
    h = h.reshape((n, c // factor**2, factor, factor, height, width))
    h = h.dimshuffle(0, 1, 4, 2, 5, 3)
    return h.reshape((n, c // factor**2, height * factor, width * factor))


def avg_pool2(x):
    """2x2 average pooling (the original calls it nearest-neighbour downsampling)."""
    n, c, height, width = x.shape
    return x.reshape((n, c, height // 2, 2, width // 2, 2)).mean(axis=5).mean(axis=3)


def upsample_nn2(x):
    """2x nearest-neighbour upsampling."""
    return x.repeat(2, axis=2).repeat(2, axis=3)


def border_image(height, width, pad_h, pad_w):
    """The pad channel for an input of this size: 1 on the padded border, 0 inside."""
    border = T.ones((1, 1, height + 2 * pad_h, width + 2 * pad_w), dtype=floatX)
    return T.set_subtensor(border[:, :, pad_h:pad_h + height, pad_w:pad_w + width], 0)


class Conv2d:
    """Weight-normalised convolution ``conv2d(name, n_in, n_out, kernel, downsample, upsample)``.

    Parameters ``{name}_w (n_out*up^2, n_in+1, kh, kw)``, ``{name}_b``, ``{name}_s``; the
    effective kernel is ``w / ||w|| * exp(3 s)``. The input is zero-padded by (k-1)/2 and
    gets one extra channel that is 1 on the padded border (none for 1x1 kernels); then a
    true (flipped) 'valid' convolution with stride ``downsample``, ``+ b``, and
    ``depth_to_space`` by ``upsample``.
    """

    init_target_std = 0.1
    init_eps = 1e-7
    norm_eps = 0.0
    # Our C ops: stride-1 convolutions (with an ELU input, the pad channel and the bias)
    # on the batched-GEMM op (gemm_conv.py) and the weight norm as one op (weight_norm.py);
    # same sums, much faster on CPU. False gives plain Theano expressions and conv2d, the
    # version they are tested against.
    custom_ops = CUSTOM_OPS
    taps = None  # kernel positions (flat i * kw + j) that can be nonzero; None: all

    def __init__(self, params, rng, name, n_in, n_out, kernel, downsample=1, upsample=1):
        self.name, name_w = split_shared_name(name)
        kh, kw = kernel
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"{self.name}: kernel {kernel} must have odd sizes")
        self.n_in, self.n_out = n_in, n_out
        self.pad = ((kh - 1) // 2, (kw - 1) // 2)
        self.has_pad_channel = kh > 1 or kw > 1
        self.downsample, self.upsample = downsample, upsample
        shape = (n_out * upsample**2, n_in + int(self.has_pad_channel), kh, kw)
        self.w_name, self.b_name, self.s_name = name_w + "_w", self.name + "_b", self.name + "_s"
        params[self.w_name] = self.initial_weights(rng, shape).astype(floatX)
        params[self.b_name] = np.zeros(shape[0], floatX)
        params[self.s_name] = np.zeros(shape[0], floatX)

    def initial_weights(self, rng, shape):
        return 0.05 * rng.randn(*shape)

    def unnormalised(self, w):
        """The weight before normalisation (masked convolutions mask it)."""
        return w[self.w_name]

    def kernel(self, w):
        """``v / (||v|| + norm_eps) * exp(3 s)``, the norm per output channel (docs/model.md §2)."""
        v, s = self.unnormalised(w), w[self.s_name]
        if self.custom_ops:
            return weight_norm(v, s, self.norm_eps)
        norm = T.sqrt(T.sqr(v).sum(axis=(1, 2, 3), keepdims=True))
        return v / (norm + self.norm_eps) * T.exp(3 * s).dimshuffle(0, "x", "x", "x")

    def __call__(self, x, w):
        kernel, b = self.kernel(w), w[self.b_name]
        one_op = self.custom_ops and self.downsample == 1
        elu_input = x.owner is not None and isinstance(x.owner.op, ELU)
        if elu_input and one_op:
            x = x.owner.inputs[0]  # the op applies ELU itself
        elif elu_input and not self.custom_ops:
            x = plain_elu(x.owner.inputs[0])  # the version the ops are tested against
        if one_op:
            # The convolution of elu(x) (or x), the pad channel's border term and the
            # bias in one op, with all three in its gradients' passes too.
            h = gemm_conv2d(x, kernel, b, self.taps, elu_input, self.has_pad_channel)
        else:
            h = self.plain_convolution(x, kernel) + b.dimshuffle("x", 0, "x", "x")
        if isinstance(w, DataInit):
            h = w.normalise(self, h, self.init_target_std, self.init_eps)
        if self.upsample > 1:
            h = depth_to_space(h, self.upsample)
        return h

    def plain_convolution(self, x, kernel):
        """The convolution with Theano's conv2d, the pad channel as a fixed border term:
        convolved once as a 1-image batch and broadcast, instead of concatenated to every
        input (the same sum, far less memory traffic)."""
        stride = (self.downsample, self.downsample)
        if not self.has_pad_channel:
            return T.nnet.conv2d(x, kernel, border_mode=self.pad, subsample=stride)
        border = border_image(x.shape[2], x.shape[3], *self.pad)
        h = T.nnet.conv2d(x, kernel[:, :-1], border_mode=self.pad, subsample=stride)
        return h + T.addbroadcast(T.nnet.conv2d(border, kernel[:, -1:], subsample=stride), 0)
