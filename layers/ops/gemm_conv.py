"""A convolution layer for Theano on CPU as one op: large GEMMs on all cores, with the input's
ELU, the pad channel's border term and the bias folded into the same passes.

``GemmConv()(x, w, b)`` equals ``T.nnet.conv2d(x, w, border_mode='half') + b`` up to
float32 rounding (stride 1, odd kernels). Options: ``elu_input`` convolves ``elu(x)``
(its derivative goes into the input gradient's pass), ``pad_channel`` treats the kernel's
last input channel as the pad channel of docs/model.md §2 (1 on the zero padding, so its
contribution is a fixed border term), and ``taps`` lists the kernel positions a mask
leaves nonzero. Theano's CPU convolution (CorrMM) runs im2col and a GEMM one image at a
time; at the model's 16x16 and 8x8 feature maps those GEMMs have only 256 or 64 columns,
and OpenBLAS's two threads spend more time waking each other than multiplying. Here the
minibatch is cut into groups of whole images (about 512 output pixels each); each OpenMP
thread takes a group and runs im2col and one single-threaded GEMM on it, so all cores stay
busy with large products and no intermediate is ever larger than a group. The gradient
ops rebuild the columns instead of keeping them from the forward pass, so memory stays
that of the inputs; the weights' gradient op also gives the bias's. The C code is in
``gemm_conv.c``.
"""
from pathlib import Path

from ..runtime.backend import T, c_code_version, gof, theano
from . import c_support
from .c_support import ELU_FUNCTIONS, OUTPUT_ARRAY

ldflags = theano.tensor.blas.ldflags
blas_header_text = theano.tensor.blas_headers.blas_header_text
blas_header_version = theano.tensor.blas_headers.blas_header_version

C_FILE = Path(__file__).with_name("gemm_conv.c")

_C_CODE = """
{
    PyArrayObject* a = PyArray_GETCONTIGUOUS(%(a)s);
    PyArrayObject* b = PyArray_GETCONTIGUOUS(%(b)s);
    PyArrayObject* c = PyArray_GETCONTIGUOUS(%(c)s);
    int status = -2;
    if (a && b && c) {
        %(sizes)s
        %(tap_index)s
        const iafconv_layer L = {N, C, H, W, F, kh, kw, %(n_taps)s, %(index)s, %(elu_input)d,
                                 %(pad_channel)d};
        if (bad_shapes) {
            PyErr_Format(PyExc_ValueError, "%(op)s: %%s", bad_shapes);
        } else if (%(allocate)s) {
            if (N == 0) {  /* no images: empty, or zero gradients */
                %(zero)s
                status = 0;
            } else {
                status = %(call)s;
                if (status) PyErr_NoMemory();
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


class _GemmConvOp(gof.Op):
    """Common C plumbing. A subclass names its C call and its outputs' dims, where the sizes
    N, C, H, W (images), F (filters), kh, kw (kernel) are read from its inputs ``a``, ``b``,
    ``c``, and C tests of shape mismatches.

    ``taps``: the kernel positions (flat ``i * kw + j``) that may be nonzero in the image
    channels, or None for all. The op then computes the convolution with those channels'
    kernel zeroed elsewhere (and its exact gradient), skipping the zero taps' work: a
    masked convolution's mask is fixed. The pad channel uses every tap.
    """

    __props__ = ("taps", "elu_input", "pad_channel")
    input_ndims = output_ndims = call = sizes = outputs = checks = None

    def __init__(self, taps=None, elu_input=False, pad_channel=False):
        self.taps = None if taps is None else tuple(sorted(int(t) for t in taps))
        self.elu_input, self.pad_channel = bool(elu_input), bool(pad_channel)

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
        checks = self.checks + [("kh % 2 == 0 || kw % 2 == 0", "kernel sizes must be odd"),
                                ("H == 0 || W == 0 || F == 0 || C + pad == 0",
                                 "empty images or kernel")]
        if self.taps is None:
            taps = dict(tap_index="", n_taps="kh * kw", index="NULL")
        else:
            index = ", ".join(map(str, self.taps))
            taps = dict(tap_index=f"static const int tap_index[] = {{{index}}};",
                        n_taps=len(self.taps), index="tap_index")
            checks = checks + [(f"kh * kw <= {self.taps[-1]}", "the taps do not fit the kernel")]
        tests = "".join(f"({test}) ? \"{message}\" : "
                        for test, message in checks).format(**names)
        sizes.append(f"const int pad = {int(self.pad_channel)};")
        sizes.append(f"const char* bad_shapes = {tests}NULL;")
        dims = [f"const npy_intp dims_{k}[] = {{{d}}};" for k, d in enumerate(self.outputs)]
        allocate = " && ".join(f"iaf_output(&{out}, {n}, dims_{k}) == 0"
                               for k, (out, n) in enumerate(zip(outputs, self.output_ndims)))
        zero = " ".join(f"memset(PyArray_DATA({out}), 0, PyArray_NBYTES({out}));"
                        for out in outputs)
        data = {**{k: f"(const float*)PyArray_DATA({k})" for k in "abc"},
                **{f"out{k}": f"(float*)PyArray_DATA({out})" for k, out in enumerate(outputs)}}
        return _C_CODE % dict(
            a=inputs[0], b=inputs[1], c=inputs[2], sizes="\n        ".join(sizes + dims),
            allocate=allocate, zero=zero, call=self.call.format(**data),
            elu_input=self.elu_input, pad_channel=self.pad_channel, op=type(self).__name__,
            fail=sub["fail"], **taps)

    def c_support_code(self):
        return blas_header_text() + ELU_FUNCTIONS + OUTPUT_ARRAY + C_FILE.read_text()

    def c_headers(self):
        return ["<omp.h>", "<string.h>", "<stdlib.h>"]

    def c_libraries(self):
        return ldflags()

    def c_compile_args(self):
        return ldflags(libs=False, flags=True) + ["-fopenmp"]

    def c_lib_dirs(self):
        return ldflags(libs=False, libs_dir=True)

    def c_header_dirs(self):
        return ldflags(libs=False, include_dir=True)

    def c_code_cache_version(self):
        return c_code_version(__file__, C_FILE, c_support.__file__) + blas_header_version()


_IMAGES = {"N": ("a", 0), "C": ("a", 1), "H": ("a", 2), "W": ("a", 3)}


def _kernel_fits(kernel):
    """The C test that input ``kernel`` has the image's channels (and the pad channel)."""
    return (f"PyArray_DIMS({{{kernel}}})[1] != C + pad",
            "the kernel's input channels do not fit the image's")


def _gradient_fits(gradient):
    """The C test that input ``gradient`` has the output's shape (N, F, H, W)."""
    return (f"PyArray_DIMS({{{gradient}}})[0] != N || PyArray_DIMS({{{gradient}}})[1] != F"
            f" || PyArray_DIMS({{{gradient}}})[2] != H || PyArray_DIMS({{{gradient}}})[3] != W",
            "the output gradient does not fit the input and the kernel")


class GemmConv(_GemmConvOp):
    """y = conv2d(a(x), w[:, :C], border_mode='half') + border term + b for x (N, C, H, W),
    w (F, C [+ 1], kh, kw), b (F), with a = elu or the identity (and the taps)."""

    input_ndims, output_ndims = (4, 4, 1), (4,)
    call = "iafconv_forward(&L, {a}, {b}, {c}, {out0})"
    sizes = {**_IMAGES, "F": ("b", 0), "kh": ("b", 2), "kw": ("b", 3)}
    outputs = ["N, F, H, W"]
    checks = [_kernel_fits("b"),
              ("PyArray_DIMS({c})[0] != F", "the bias and the kernel have different filters")]

    def make_node(self, x, w, b):
        return super().make_node(x, w, b)

    def infer_shape(self, node, shapes):
        x, w, _ = shapes
        return [(x[0], w[0], x[2], x[3])]

    def grad(self, inputs, output_grads):
        x, w, _ = inputs
        (gy,) = output_grads
        options = (self.taps, self.elu_input, self.pad_channel)
        return [GemmConvGradInputs(*options)(w, gy, x), *GemmConvGradWeights(*options)(x, gy, w)]


class GemmConvGradWeights(_GemmConvOp):
    """The gradients of `GemmConv` with respect to w and b, from x and the output gradient
    (the third input, w itself, only gives the kernel's shape)."""

    input_ndims, output_ndims = (4, 4, 4), (4, 1)
    call = "iafconv_grad_weights(&L, {a}, {b}, {out0}, {out1})"
    sizes = {**_IMAGES, "F": ("c", 0), "kh": ("c", 2), "kw": ("c", 3)}
    outputs = ["F, C + pad, kh, kw", "F"]
    checks = [_gradient_fits("b"), _kernel_fits("c")]

    def make_node(self, x, gy, w):
        return super().make_node(x, gy, w)

    def infer_shape(self, node, shapes):
        return [shapes[2], shapes[2][:1]]


class GemmConvGradInputs(_GemmConvOp):
    """The gradient of `GemmConv` with respect to x, from w, the output gradient and x (x
    only for ELU's derivative and the shape)."""

    input_ndims, output_ndims = (4, 4, 4), (4,)
    call = "iafconv_grad_inputs(&L, {a}, {b}, {c}, {out0})"
    sizes = {"N": ("c", 0), "C": ("c", 1), "H": ("c", 2), "W": ("c", 3), "F": ("a", 0),
             "kh": ("a", 2), "kw": ("a", 3)}
    outputs = ["N, C, H, W"]
    checks = [_gradient_fits("b"), _kernel_fits("a")]

    def make_node(self, w, gy, x):
        return super().make_node(w, gy, x)

    def infer_shape(self, node, shapes):
        return [shapes[2]]
