"""The convolution of a layer (docs/model.md §2): our oneDNN op, or Theano's."""
from ..runtime.backend import T, floatX
from .onednn_conv import OnednnConv


def custom(x, kernel, bias, kernel_shape, stride, pad_channel, taps, precision):
    """The oneDNN op, which also adds the border term and the bias."""
    return OnednnConv(stride, taps, False, pad_channel, precision)(x, kernel, bias)


def plain(x, kernel, bias, kernel_shape, stride, pad_channel, taps, precision):
    """Theano's conv2d, the pad channel as a fixed border term: convolved once as a
    1-image batch and broadcast, instead of concatenated to every input (the same sum, far
    less memory traffic). ``taps`` is not needed: the kernel is zero elsewhere; the
    precision is fp32 (`check_conv_precision` refuses bf16 with the plain ops)."""
    pad = tuple((k - 1) // 2 for k in kernel_shape)
    subsample = (stride, stride)
    if not pad_channel:
        h = T.nnet.conv2d(x, kernel, border_mode=pad, subsample=subsample)
    else:
        border = _border_image(x.shape[2], x.shape[3], *pad)
        h = T.nnet.conv2d(x, kernel[:, :-1], border_mode=pad, subsample=subsample)
        h = h + T.addbroadcast(T.nnet.conv2d(border, kernel[:, -1:], subsample=subsample), 0)
    return h + bias.dimshuffle("x", 0, "x", "x")


def _border_image(height, width, pad_h, pad_w):
    """The pad channel for an input of this size: 1 on the padded border, 0 inside."""
    border = T.ones((1, 1, height + 2 * pad_h, width + 2 * pad_w), dtype=floatX)
    return T.set_subtensor(border[:, :, pad_h:pad_h + height, pad_w:pad_w + width], 0)
