"""Weight-normalised convolution with the pad channel (docs/model.md §2), and 2x resampling.

A layer is a small object: its constructor puts its parameters' initial values into the
model's ``name -> array`` dict (the model then stores them all in one flat buffer, see
`layers.parameters`); calling it with an input and *a* dict of symbolic parameters (the
trained weights, their Polyak averages, or a `DataInit`) applies it.
"""
from functools import partial

import numpy as np

from .backend import CUSTOM_OPS, T, floatX
from .channel_norm import ChannelNormalise, plain_channel_normalise
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
        normalise = ChannelNormalise(target_std, eps) if conv.custom_ops else \
            partial(plain_channel_normalise, target_std=target_std, eps=eps)
        h, s, b, ok = normalise(h)
        self.records.append((conv, s, b, ok))
        return h


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
    norm_mask = None  # a fixed mask the weight is multiplied by before the norm

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
        """``0.05 * randn`` from ``rng`` (zeros without one: weights to be loaded)."""
        return np.zeros(shape) if rng is None else 0.05 * rng.randn(*shape)

    def kernel(self, w):
        """``v / (||v|| + norm_eps) * exp(3 s)``, the norm per output channel, with ``v`` the
        weight times ``norm_mask`` if there is one (docs/model.md §2, §3)."""
        v, s = w[self.w_name], w[self.s_name]
        if self.custom_ops:
            return weight_norm(v, s, self.norm_eps, self.norm_mask)
        if self.norm_mask is not None:
            v = self.norm_mask * v
        norm = T.sqrt(T.sqr(v).sum(axis=(1, 2, 3), keepdims=True))
        return v / (norm + self.norm_eps) * T.exp(3 * s).dimshuffle(0, "x", "x", "x")

    def __call__(self, x, w):
        return convolve_together([self], x, w)[0]

    @property
    def form(self):
        """What convolutions computed together (`convolve_together`) must share."""
        return self.n_in, self.pad, self.taps, self.has_pad_channel, self.downsample

    def output(self, h, w):
        """The layer's output from its convolution plus bias ``h``: the data-dependent init
        normalises it (docs/model.md §2), then depth-to-space by ``upsample``."""
        if isinstance(w, DataInit):
            h = w.normalise(self, h, self.init_target_std, self.init_eps)
        return depth_to_space(h, self.upsample) if self.upsample > 1 else h

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


def convolve_together(convs, x, w):
    """``[conv(x, w) for conv in convs]`` for convolutions of one form (kernel, taps, pad
    channel, stride) that read the same input: computed as one convolution with their
    kernels and biases stacked, which reads the input once and runs larger GEMMs (an IAF
    network's output layers, of only n_z filters each)."""
    first = convs[0]
    if any(conv.form != first.form for conv in convs):
        raise ValueError("only convolutions of one form can be computed together")
    kernel = _stacked([conv.kernel(w) for conv in convs])
    b = _stacked([w[conv.b_name] for conv in convs])
    one_op = first.custom_ops and first.downsample == 1
    elu_input = x.owner is not None and isinstance(x.owner.op, ELU)
    if elu_input and one_op:
        x = x.owner.inputs[0]  # the op applies ELU itself
    elif elu_input and not first.custom_ops:
        x = plain_elu(x.owner.inputs[0])  # the version the ops are tested against
    if one_op:
        # The convolution of elu(x) (or x), the pad channel's border term and the bias in
        # one op, with all three in its gradients' passes too.
        h = gemm_conv2d(x, kernel, b, first.taps, elu_input, first.has_pad_channel)
    else:
        h = first.plain_convolution(x, kernel) + b.dimshuffle("x", 0, "x", "x")
    sizes = [conv.n_out * conv.upsample ** 2 for conv in convs]
    parts = [h] if len(convs) == 1 else T.split(h, sizes, len(convs), axis=1)
    return [conv.output(part, w) for conv, part in zip(convs, parts)]


def _stacked(parts):
    return parts[0] if len(parts) == 1 else T.concatenate(parts)
