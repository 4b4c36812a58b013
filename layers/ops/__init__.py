"""The project's C ops for Theano, each behind one switch with its plain-Theano twin.

Model code calls the functions below and nothing else of this package. Each builds its
custom op while `CUSTOM_OPS` is on (the default) and the plain Theano expression it is
tested against when ``IAF_CUSTOM_OPS=0`` (or when a test sets `CUSTOM_OPS`); the two
compute the same thing to float32 rounding (tests/test_custom_ops.py).

- `conv2d`: convolutions on oneDNN (`onednn_conv`; `onednn` finds the library), with the
  pad channel's border term and the bias in the same pass; an ELU in front is folded in
  by a graph rewrite (`rewrites`), its derivative into the gradients' passes. Their
  inputs are fp32, or bf16 within `conv_precision("bf16")` (`conv_precision_problem` says
  whether this CPU can).
- `normalised_weights`: weight normalisation as one op (`weight_norm`).
- `normalised_channels`: the data-dependent init's normalisation as one op (`channel_norm`).
- `elu`: ELU as a vectorised op and its derivative (`elementwise`).
- `adamax_polyak_step`: the optimiser's update over the flat buffers, in place (`adamax`).
- `parameter_views`: every parameter as a view of the flat buffer, from one node (`views`).

May import: `layers.runtime.backend` (Theano), numpy, the standard library.
"""
import contextlib
import os

from ..runtime.backend import T
from . import adamax, channel_norm, conv, elementwise, onednn, rewrites, views, weight_norm
from .onednn_conv import PRECISIONS

# True: our C ops; False: the plain Theano twins. One switch for all of them.
CUSTOM_OPS = os.environ.get("IAF_CUSTOM_OPS", "1") != "0"
_conv_precision = ["fp32"]  # of the convolutions built now (see `conv_precision`)

rewrites.register()


def conv_precision_problem(precision):
    """None if convolutions can run in ``precision`` ('fp32' or 'bf16') on this CPU with the
    ops the switch selects, else one sentence that says why not."""
    if precision not in PRECISIONS:
        return f"conv_precision={precision!r}: valid choices: {', '.join(PRECISIONS)}"
    if precision == "bf16" and not CUSTOM_OPS:
        return ("conv_precision=bf16 runs on the oneDNN convolution op, and "
                "IAF_CUSTOM_OPS=0 selects plain Theano's, which is fp32 only")
    if precision == "bf16" and not onednn.has_bf16():
        return (f"conv_precision=bf16 needs a CPU with AMX-BF16 or AVX512-BF16 instructions, "
                f"and this one has neither (oneDNN runs on {onednn.cpu_isa()[0]} here); "
                f"conv_precision=fp32 works on any CPU")
    return None


@contextlib.contextmanager
def conv_precision(precision):
    """Within it, `conv2d` builds convolutions (and, from them, their gradients) whose
    inputs are rounded to ``precision`` ('fp32' or 'bf16'; as ``torch.autocast``)."""
    problem = conv_precision_problem(precision)
    if problem:
        raise ValueError(problem)
    _conv_precision.append(precision)
    try:
        yield
    finally:
        _conv_precision.pop()


def _twin(module):
    """The version of an op module's function that the switch selects."""
    return module.custom if CUSTOM_OPS else module.plain


def conv2d(x, kernel, bias, kernel_shape, stride=1, pad_channel=False, taps=None):
    """The convolution of docs/model.md §2 plus ``bias``: zero padding of ``(k - 1) / 2``,
    a true (flipped) convolution with ``stride``; with ``pad_channel`` the kernel's last
    input channel is the pad channel (1 on the padding). ``taps``, if given, lists the
    kernel positions (flat ``i * kw + j``) where the image channels' kernel may be nonzero."""
    return _twin(conv)(x, kernel, bias, tuple(kernel_shape), stride, pad_channel, taps,
                       _conv_precision[-1])


def normalised_weights(v, s, eps, mask=None):
    """``u / (||u|| + eps) * exp(3 s)`` with the norm over each filter (axis 0 indexes the
    filters) and ``u = mask * v`` for a constant ``mask``, or ``u = v``."""
    return _twin(weight_norm)(v, s, eps, mask)


def normalised_channels(h, target_std, eps):
    """``(h / scale + b, s, b, ok)`` per channel of h (N, C, H, W), with ``scale = std /
    target_std + eps`` over (N, H, W), ``s = -log(scale) / 3``, ``b = -mean(h / scale)``;
    ``ok`` is 0, and the output is h itself, if any channel has std 0."""
    return _twin(channel_norm)(h, target_std, eps)


def elu(h):
    """``h`` where ``h >= 0``, else ``exp(h) - 1``, elementwise."""
    return _twin(elementwise)(h)


def adamax_polyak_step(w, avg, m, u, keep, g, alpha, beta1, beta2, floor):
    """``(new [w, avg, m, u], applied)`` of one AdaMax + Polyak step (docs/model.md §10) on
    flat vectors, with ``g`` the gradient (further elements, e.g. the cost, are only
    checked) and ``keep`` (uint8) 0 where a masked weight stays 0: if every element of g
    is finite the step's values and 1, else the old values and 0."""
    return _twin(adamax)(w, avg, m, u, keep, g, alpha, beta1, beta2, floor)


def parameter_views(flat, shapes):
    """Symbolic views of consecutive parts of the flat vector ``flat``, one per shape."""
    shapes = [tuple(int(d) for d in shape) for shape in shapes]
    return _twin(views)(T.as_tensor_variable(flat), shapes)
