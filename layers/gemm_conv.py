"""A faster stride-1 'half'-padded convolution for Theano on CPU: large GEMMs, all cores.

``gemm_conv2d(x, w)`` equals ``T.nnet.conv2d(x, w, border_mode='half')`` up to float32
rounding. Theano's CPU convolution (CorrMM) runs im2col and a GEMM one image at a time; at
the model's 16x16 and 8x8 feature maps those GEMMs have only 256 or 64 columns, and
OpenBLAS's two threads spend more time waking each other than multiplying. Here the
minibatch is cut into groups of whole images (about 512 output pixels each); each OpenMP
thread takes a group and runs im2col and one single-threaded GEMM on it, so all cores stay
busy with large products and no intermediate is ever larger than a group. The gradient
ops rebuild the columns instead of keeping them from the forward pass, so memory stays
that of the inputs. The C code is in ``gemm_conv.c``.
"""
from pathlib import Path

from .backend import T, c_code_version, gof, theano

ldflags = theano.tensor.blas.ldflags
blas_header_text = theano.tensor.blas_headers.blas_header_text
blas_header_version = theano.tensor.blas_headers.blas_header_version

_C_SOURCE = (Path(__file__).parent / "gemm_conv.c").read_text()

_C_CODE = """
{
    PyArrayObject* a = PyArray_GETCONTIGUOUS(%(a)s);
    PyArrayObject* b = PyArray_GETCONTIGUOUS(%(b)s);
    int status = -2;
    if (a && b) {
        %(sizes)s
        %(tap_index)s
        const iafconv_taps taps = {kh, kw, %(n_taps)s, %(index)s};
        npy_intp out_dims[4] = {%(out_dims)s};
        if (bad_shapes) {
            PyErr_Format(PyExc_ValueError, "%(op)s: %%s", bad_shapes);
        } else {
            if (!%(out)s || !PyArray_IS_C_CONTIGUOUS(%(out)s)
                    || !PyArray_CompareLists(PyArray_DIMS(%(out)s), out_dims, 4)) {
                Py_XDECREF(%(out)s);
                %(out)s = (PyArrayObject*)PyArray_EMPTY(4, out_dims, NPY_FLOAT32, 0);
            }
            if (%(out)s && N == 0) {  /* no images: empty, or a zero weight gradient */
                memset(PyArray_DATA(%(out)s), 0, PyArray_NBYTES(%(out)s));
                status = 0;
            } else if (%(out)s) {
                status = %(function)s((const float*)PyArray_DATA(a), (const float*)PyArray_DATA(b),
                                      (float*)PyArray_DATA(%(out)s), N, C, H, W, F, &taps);
                if (status) PyErr_NoMemory();
            }
        }
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    if (status) %(fail)s
}
"""

_DIM = "const int {} = PyArray_DIMS({})[{}];"


class _GemmConvOp(gof.Op):
    """Common C plumbing. A subclass names its C function, where the sizes N, C, H, W
    (images), F (filters), kh, kw (kernel) are read from its inputs ``a``, ``b`` (and, for
    the weights gradient, ``k``), the output's dims, and C tests of shape mismatches.

    ``taps``: the kernel positions (flat ``i * kw + j``) that may be nonzero, or None for
    all. The op then computes the convolution with the kernel zeroed elsewhere (and its
    exact gradient), skipping the zero taps' work: a masked convolution's mask is fixed.
    """

    __props__ = ("taps",)
    function = sizes = out_dims = checks = None

    def __init__(self, taps=None):
        self.taps = None if taps is None else tuple(sorted(int(t) for t in taps))

    def make_node(self, *inputs):
        inputs = [T.as_tensor_variable(v) for v in inputs]
        for v in inputs:
            if v.ndim != 4 or v.dtype != "float32":
                raise TypeError(f"{type(self).__name__} takes 4-d float32 tensors, not {v.type}")
        return gof.Apply(self, inputs, [T.tensor4(dtype="float32")])

    def c_code(self, node, name, inputs, outputs, sub):
        names = dict(zip("abk", inputs))
        sizes = [_DIM.format(size, names[array], axis)
                 for size, (array, axis) in self.sizes.items()]
        checks = self.checks + _ODD_KERNEL
        if self.taps is None:
            taps = dict(tap_index="", n_taps="kh * kw", index="NULL")
        else:
            index = ", ".join(map(str, self.taps))
            taps = dict(tap_index=f"static const int tap_index[] = {{{index}}};",
                        n_taps=len(self.taps), index="tap_index")
            checks = checks + [(f"kh * kw <= {self.taps[-1]}", "the taps do not fit the kernel")]
        tests = "".join(f"({test}) ? \"{message}\" : "
                        for test, message in checks).format(**names)
        sizes.append(f"const char* bad_shapes = {tests}NULL;")
        return _C_CODE % dict(
            a=inputs[0], b=inputs[1], out=outputs[0], sizes="\n        ".join(sizes),
            out_dims=self.out_dims, function=self.function, op=type(self).__name__,
            fail=sub["fail"], **taps)

    def c_support_code(self):
        return blas_header_text() + _C_SOURCE

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
        return c_code_version(_C_SOURCE + _C_CODE) + blas_header_version()

_ODD_KERNEL = [("kh % 2 == 0 || kw % 2 == 0", "kernel sizes must be odd")]
_IMAGES = {"N": ("a", 0), "C": ("a", 1), "H": ("a", 2), "W": ("a", 3)}


class GemmConv(_GemmConvOp):
    """y = conv2d(x, w, border_mode='half') for x (N, C, H, W), w (F, C, kh, kw), odd k
    (with w zeroed outside ``taps``)."""

    function = "iafconv_forward"
    sizes = {**_IMAGES, "F": ("b", 0), "kh": ("b", 2), "kw": ("b", 3)}
    out_dims = "N, F, H, W"
    checks = [("PyArray_DIMS({b})[1] != C", "input and filter channels differ")]

    def make_node(self, x, w):
        return super().make_node(x, w)

    def infer_shape(self, node, shapes):
        x, w = shapes
        return [(x[0], w[0], x[2], x[3])]

    def grad(self, inputs, output_grads):
        x, w = inputs
        (gy,) = output_grads
        return [GemmConvGradInputs(self.taps)(w, gy), GemmConvGradWeights(self.taps)(x, gy, w)]


class GemmConvGradWeights(_GemmConvOp):
    """The gradient of ``GemmConv`` with respect to w, from x and the output gradient
    (the third input, w itself, only gives the kernel size)."""

    function = "iafconv_grad_weights"
    sizes = {**_IMAGES, "F": ("b", 1), "kh": ("k", 2), "kw": ("k", 3)}
    out_dims = "F, C, kh, kw"
    checks = [("PyArray_DIMS({b})[0] != N || PyArray_DIMS({b})[2] != H"
               " || PyArray_DIMS({b})[3] != W", "input and output gradient sizes differ"),
              ("PyArray_DIMS({k})[0] != F || PyArray_DIMS({k})[1] != C",
               "filter and gradient sizes differ")]

    def make_node(self, x, gy, w):
        return super().make_node(x, gy, w)

    def infer_shape(self, node, shapes):
        return [shapes[2]]


class GemmConvGradInputs(_GemmConvOp):
    """The gradient of ``GemmConv`` with respect to x, from w and the output gradient."""

    function = "iafconv_grad_inputs"
    sizes = {"N": ("b", 0), "C": ("a", 1), "H": ("b", 2), "W": ("b", 3), "F": ("a", 0),
             "kh": ("a", 2), "kw": ("a", 3)}
    out_dims = "N, C, H, W"
    checks = [("PyArray_DIMS({b})[1] != F", "filter and output gradient channels differ")]

    def make_node(self, w, gy):
        return super().make_node(w, gy)

    def infer_shape(self, node, shapes):
        w, gy = shapes
        return [(gy[0], w[1], gy[2], gy[3])]


def gemm_conv2d(x, w, taps=None):
    """``T.nnet.conv2d(x, w, border_mode='half')`` for float32 x and w (odd kernel sizes);
    with ``taps``, the kernel must be zero outside those positions (flat ``i * kw + j``)."""
    return GemmConv(taps)(x, w)
