"""Weight-normalised convolution with the pad channel (docs/model.md §2), and 2x resampling."""
import numpy as np

from . import ops
from .runtime.backend import T, floatX


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
    scale ``s`` and bias ``b`` that give that normalisation (docs/model.md §2, §3). Compiling
    the recorded expressions gives all of them from one call on the init batch.
    """

    def __init__(self, params):
        super().__init__(params)
        self.records = []  # (conv, s, b, ok) with ok = no channel had std 0

    def normalise(self, conv, h):
        h, s, b, ok = ops.normalised_channels(h, conv.init_target_std, conv.init_eps)
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
    taps = None  # kernel positions (flat i * kw + j) that can be nonzero; None: all
    norm_mask = None  # a fixed mask the weight is multiplied by before the norm

    def __init__(self, initial, rng, name, n_in, n_out, kernel, downsample=1, upsample=1):
        self.name, name_w = split_shared_name(name)
        kh, kw = kernel
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"{self.name}: kernel {kernel} must have odd sizes")
        self.n_in, self.n_out, self.kernel_shape = n_in, n_out, (kh, kw)
        self.has_pad_channel = kh > 1 or kw > 1
        self.downsample, self.upsample = downsample, upsample
        shape = (n_out * upsample**2, n_in + int(self.has_pad_channel), kh, kw)
        self.w_name, self.b_name, self.s_name = name_w + "_w", self.name + "_b", self.name + "_s"
        initial[self.w_name] = self.initial_weights(rng, shape).astype(floatX)
        initial[self.b_name] = np.zeros(shape[0], floatX)
        initial[self.s_name] = np.zeros(shape[0], floatX)

    def initial_weights(self, rng, shape):
        """``0.05 * randn`` from ``rng`` (zeros without one: weights to be loaded)."""
        return np.zeros(shape) if rng is None else 0.05 * rng.randn(*shape)

    def kernel(self, params):
        """``v / (||v|| + norm_eps) * exp(3 s)``, the norm per output channel, with ``v`` the
        weight times ``norm_mask`` if there is one (docs/model.md §2, §3)."""
        return ops.normalised_weights(params[self.w_name], params[self.s_name], self.norm_eps,
                                      self.norm_mask)

    def __call__(self, x, params):
        return convolve_together([self], x, params)[0]

    @property
    def form(self):
        """What convolutions computed together (`convolve_together`) must share."""
        return self.n_in, self.kernel_shape, self.taps, self.has_pad_channel, self.downsample

    def output(self, h, params):
        """The layer's output from its convolution plus bias ``h``: the data-dependent init
        normalises it (docs/model.md §2), then depth-to-space by ``upsample``."""
        if isinstance(params, DataInit):
            h = params.normalise(self, h)
        return depth_to_space(h, self.upsample) if self.upsample > 1 else h


def convolve_together(convs, x, params):
    """``[conv(x, params) for conv in convs]`` for convolutions of one form (kernel, taps,
    pad channel, stride) that read the same input: computed as one convolution with their
    kernels and biases stacked, which reads the input once and runs larger GEMMs (an IAF
    network's output layers, of only n_z filters each)."""
    first = convs[0]
    if any(conv.form != first.form for conv in convs):
        raise ValueError("only convolutions of one form can be computed together")
    kernel = _stacked([conv.kernel(params) for conv in convs])
    bias = _stacked([params[conv.b_name] for conv in convs])
    h = ops.conv2d(x, kernel, bias, first.kernel_shape, first.downsample,
                   first.has_pad_channel, first.taps)
    sizes = [conv.n_out * conv.upsample ** 2 for conv in convs]
    parts = [h] if len(convs) == 1 else T.split(h, sizes, len(convs), axis=1)
    return [conv.output(part, params) for conv, part in zip(convs, parts)]


def _stacked(parts):
    return parts[0] if len(parts) == 1 else T.concatenate(parts)
