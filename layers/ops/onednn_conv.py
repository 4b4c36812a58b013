"""A convolution layer for Theano on oneDNN, in three ops (forward, input gradient, weight
gradient), with the input's ELU, the pad channel's border term and the bias folded into
the same passes, in fp32 or with bf16 inputs.

``OnednnConv(stride)(x, w, b)`` equals ``T.nnet.conv2d(x, w, border_mode='half',
subsample=(stride, stride)) + b`` (odd kernels) up to the rounding of its precision.
Options: ``elu_input`` convolves ``elu(x)`` (its derivative goes into the input gradient's
pass), ``pad_channel`` treats the kernel's last input channel as the pad channel of
docs/model.md §2 (1 on the zero padding: a fixed border term), ``taps`` lists the kernel
positions a mask leaves nonzero (the others' rows and columns are not computed), and
``precision``: ``'fp32'``, or ``'bf16'``: the images, kernel and output gradient are rounded
to bf16 for oneDNN, which sums their products in fp32; outputs are fp32. oneDNN picks the
fastest implementation for the CPU (AMX, AVX512-BF16, AVX-512, AVX2); its primitives are made
once per shape and kept. The options are passed to the C code at run time, so each of the
three ops compiles once. The C++ code is in ``onednn_conv.cpp``.
"""
from pathlib import Path

import numpy as np

from ..runtime.backend import T, c_code_version, gof, theano
from . import c_support, onednn
from .c_support import ELU_FUNCTIONS, OUTPUT_ARRAY

CPP_FILE = Path(__file__).with_name("onednn_conv.cpp")
PRECISIONS = ("fp32", "bf16")

_int = theano.scalar.Scalar("int32")
PARAMS = gof.ParamsType(stride=_int, elu_input=_int, pad_channel=_int, bf16=_int,
                        all_taps=_int, tap_index=T.TensorType("int32", (False,)))

_C_CODE = """
{
    PyArrayObject* a = PyArray_GETCONTIGUOUS(%(a)s);
    PyArrayObject* b = PyArray_GETCONTIGUOUS(%(b)s);
    PyArrayObject* c = PyArray_GETCONTIGUOUS(%(c)s);
    int status = -2;
    if (a && b && c) {
        %(sizes)s
        const int stride = %(params)s->stride, pad = %(params)s->pad_channel;
        const int n_taps = PyArray_SIZE(%(params)s->tap_index);
        const int* taps = (const int*)PyArray_DATA(%(params)s->tap_index);
        const int OH = H > 0 ? (H - 1) / stride + 1 : 0, OW = W > 0 ? (W - 1) / stride + 1 : 0;
        const char* bad_shapes = %(tests)sNULL;
        %(dims)s
        if (bad_shapes) {
            PyErr_Format(PyExc_ValueError, "%(op)s: %%s", bad_shapes);
        } else if (%(allocate)s) {
            if (N == 0) {  /* no images: empty, or zero gradients */
                %(zero)s
                status = 0;
            } else {
                const iafconv::Layer L(N, C, H, W, F, kh, kw, stride, %(params)s->all_taps,
                                       taps, n_taps, %(params)s->elu_input, pad,
                                       %(params)s->bf16);
                status = %(call)s;
            }
        }
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(c);
    if (status) %(fail)s
}
"""

_DIM = "const int {} = PyArray_DIMS({})[{}];"
_IMAGES = {"N": ("a", 0), "C": ("a", 1), "H": ("a", 2), "W": ("a", 3)}
_KERNEL_CHECKS = [("kh % 2 == 0 || kw % 2 == 0", "kernel sizes must be odd"),
                  ("H == 0 || W == 0 || F == 0 || C == 0", "empty images or kernel"),
                  ("!iafconv::taps_fit(taps, n_taps, kh * kw)", "the taps do not fit the kernel")]


def _kernel_fits(kernel):
    """The C test that input ``kernel`` has the image's channels (and the pad channel)."""
    return (f"PyArray_DIMS({{{kernel}}})[1] != C + pad",
            "the kernel's input channels do not fit the image's")


def _gradient_fits(gradient):
    """The C test that input ``gradient`` has the output's shape (N, F, OH, OW)."""
    return (f"PyArray_DIMS({{{gradient}}})[0] != N || PyArray_DIMS({{{gradient}}})[1] != F"
            f" || PyArray_DIMS({{{gradient}}})[2] != OH || PyArray_DIMS({{{gradient}}})[3] != OW",
            "the output gradient does not fit the input and the kernel")


class _OnednnConvOp(gof.Op):
    """Common C plumbing. A subclass names its C call and its outputs' dims, where the sizes
    N, C, H, W (images), F (filters), kh, kw (kernel) are read from its inputs ``a``, ``b``,
    ``c``, and C tests of shape mismatches.

    ``taps``: the kernel positions (flat ``i * kw + j``) that may be nonzero in the image
    channels, or None for all. The op then computes the convolution with those channels'
    kernel zeroed elsewhere (and its exact gradient, zero there). The pad channel uses every
    tap.
    """

    __props__ = ("stride", "taps", "elu_input", "pad_channel", "precision")
    params_type = PARAMS
    input_ndims = output_ndims = call = sizes = outputs = checks = None

    def __init__(self, stride=1, taps=None, elu_input=False, pad_channel=False,
                 precision="fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
        if int(stride) < 1:
            raise ValueError(f"stride {stride}: a positive integer")
        self.stride, self.precision = int(stride), precision
        self.taps = None if taps is None else tuple(sorted(int(t) for t in taps))
        self.elu_input, self.pad_channel = bool(elu_input), bool(pad_channel)

    def options(self, **changes):
        """This op's options as keyword arguments, with ``changes``."""
        return {**{name: getattr(self, name) for name in self.__props__}, **changes}

    def get_params(self, node):
        return PARAMS.get_params(stride=self.stride, elu_input=self.elu_input,
                                 pad_channel=self.pad_channel, bf16=self.precision == "bf16",
                                 all_taps=self.taps is None,
                                 tap_index=np.array(self.taps or (), np.int32))

    def make_node(self, *inputs):
        inputs = [T.as_tensor_variable(v) for v in inputs]
        for v, ndim in zip(inputs, self.input_ndims):
            if v.ndim != ndim or v.dtype != "float32":
                raise TypeError(f"{type(self).__name__} takes float32 tensors of "
                                f"{self.input_ndims} dimensions, not {v.type}")
        outputs = [T.TensorType("float32", (False,) * n)() for n in self.output_ndims]
        return gof.Apply(self, inputs, outputs)

    def c_code(self, node, name, inputs, outputs, sub):
        names = dict(zip("abc", inputs))
        sizes = [_DIM.format(size, names[array], axis)
                 for size, (array, axis) in self.sizes.items()]
        tests = "".join(f"({test}) ? \"{message}\" : "
                        for test, message in self.checks + _KERNEL_CHECKS).format(**names)
        dims = [f"const npy_intp dims_{k}[] = {{{d}}};" for k, d in enumerate(self.outputs)]
        allocate = " && ".join(f"iaf_output(&{out}, {n}, dims_{k}) == 0"
                               for k, (out, n) in enumerate(zip(outputs, self.output_ndims)))
        zero = " ".join(f"memset(PyArray_DATA({out}), 0, PyArray_NBYTES({out}));"
                        for out in outputs)
        data = {**{k: f"(const float*)PyArray_DATA({k})" for k in "abc"},
                **{f"out{k}": f"(float*)PyArray_DATA({out})" for k, out in enumerate(outputs)}}
        return _C_CODE % dict(
            a=inputs[0], b=inputs[1], c=inputs[2], sizes="\n        ".join(sizes), tests=tests,
            dims="\n        ".join(dims), allocate=allocate, zero=zero,
            call=self.call.format(**data), op=type(self).__name__, params=sub["params"],
            fail=sub["fail"])

    def c_support_code(self):
        return ELU_FUNCTIONS + OUTPUT_ARRAY + CPP_FILE.read_text()

    def c_headers(self):
        return ["<oneapi/dnnl/dnnl.hpp>", "<omp.h>", "<algorithm>", "<array>", "<cstdlib>",
                "<map>", "<vector>", "<string.h>"]

    def c_header_dirs(self):
        return [onednn.include_dir()]

    def c_libraries(self):
        return ["dnnl"]

    def c_lib_dirs(self):
        return [onednn.library_dir()]

    def c_compile_args(self):
        return ["-fopenmp", f"-Wl,-rpath,{onednn.library_dir()}"]

    def c_code_cache_version(self):
        return c_code_version(__file__, CPP_FILE, c_support.__file__)


class OnednnConv(_OnednnConvOp):
    """y = conv2d(a(x), w[:, :C], border_mode='half', subsample=stride) + border term + b
    for x (N, C, H, W), w (F, C [+ 1], kh, kw), b (F), with a = elu or the identity."""

    input_ndims, output_ndims = (4, 4, 1), (4,)
    call = "iafconv::forward(L, {a}, {b}, {c}, {out0})"
    sizes = {**_IMAGES, "F": ("b", 0), "kh": ("b", 2), "kw": ("b", 3)}
    outputs = ["N, F, OH, OW"]
    checks = [_kernel_fits("b"),
              ("PyArray_DIMS({c})[0] != F", "the bias and the kernel have different filters")]

    def infer_shape(self, node, shapes):
        x, w, _ = shapes
        return [(x[0], w[0], (x[2] - 1) // self.stride + 1, (x[3] - 1) // self.stride + 1)]

    def grad(self, inputs, output_grads):
        x, w, _ = inputs
        (gy,) = output_grads
        return [OnednnConvGradInputs(**self.options())(w, gy, x),
                *OnednnConvGradWeights(**self.options())(x, gy, w)]


class OnednnConvGradWeights(_OnednnConvOp):
    """The gradients of `OnednnConv` with respect to w and b, from x and the output gradient
    (the third input, w itself, only gives the kernel's shape)."""

    input_ndims, output_ndims = (4, 4, 4), (4, 1)
    call = "iafconv::grad_weights(L, {a}, {b}, {out0}, {out1})"
    sizes = {**_IMAGES, "F": ("c", 0), "kh": ("c", 2), "kw": ("c", 3)}
    outputs = ["F, C + pad, kh, kw", "F"]
    checks = [_gradient_fits("b"), _kernel_fits("c")]

    def infer_shape(self, node, shapes):
        return [shapes[2], shapes[2][:1]]


class OnednnConvGradInputs(_OnednnConvOp):
    """The gradient of `OnednnConv` with respect to x, from w, the output gradient and x (x
    only for ELU's derivative and the shape)."""

    input_ndims, output_ndims = (4, 4, 4), (4,)
    call = "iafconv::grad_inputs(L, {a}, {b}, {c}, {out0})"
    sizes = {"N": ("c", 0), "C": ("c", 1), "H": ("c", 2), "W": ("c", 3), "F": ("a", 0),
             "kh": ("a", 2), "kw": ("a", 3)}
    outputs = ["N, C, H, W"]
    checks = [_gradient_fits("b"), _kernel_fits("a")]

    def infer_shape(self, node, shapes):
        return [shapes[2]]
