"""C support code shared by the project's ops, and the base of those run on OpenMP."""
import sys

from ..runtime.backend import c_code_version, gof

# An op's output array: the one its storage holds when it fits (the output of its last
# call, or memory the caller put there, e.g. a view of the flat gradient vector), else
# a new one. 0 on success, -1 (a Python error set) when out of memory.
OUTPUT_ARRAY = """
static int iaf_output(PyArrayObject** out, int nd, const npy_intp* dims)
{
    if (*out && PyArray_IS_C_CONTIGUOUS(*out) && PyArray_ISWRITEABLE(*out)
            && PyArray_NDIM(*out) == nd && PyArray_TYPE(*out) == NPY_FLOAT32
            && PyArray_CompareLists(PyArray_DIMS(*out), dims, nd))
        return 0;
    Py_XDECREF(*out);
    *out = (PyArrayObject*)PyArray_EMPTY(nd, dims, NPY_FLOAT32, 0);
    return *out ? 0 : -1;
}
"""

# ELU and its slope, in a form the compiler vectorises (libm's expm1f is not: one call per
# element was most of the cost of an ELU folded into a convolution), within one unit in
# the last place of the exact values (tests/test_custom_ops.py checks it).
ELU_FUNCTIONS = """
/* For x <= 0: exp(x) = 2^k exp(r) with x = k ln2 + r, |r| <= ln2 / 2. Returns exp(r) - 1
 * (a polynomial, Horner's rule) and sets *scale to 2^k. x is clamped to [-87, 0]: below,
 * exp(x) < 2e-38, which is 0 next to 1. */
static inline float iaf_exp_parts(float x, float* scale)
{
    x = x < -87.0f ? -87.0f : (x > 0.0f ? 0.0f : x);
    const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* rounded */
    const float r = (x - k * 0.693145751953125f) - k * 1.428606765330187045e-06f;
    float p = 1.0f / 40320;
    p = p * r + 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r * r + r;
    *scale = __builtin_bit_cast(float, ((int)k + 127) << 23);
    return p;
}

/* elu(x): x if x >= 0, else exp(x) - 1 */
static inline float iaf_elu(float x)
{
    float scale;
    const float p = iaf_exp_parts(x, &scale);
    return x < 0.0f ? scale * p + (scale - 1.0f) : x;
}

/* elu'(x): 1 if x >= 0, else exp(x) */
static inline float iaf_elu_slope(float x)
{
    float scale;
    const float p = iaf_exp_parts(x, &scale);
    return x < 0.0f ? scale * p + scale : 1.0f;
}
"""


class OpenMPOp(gof.Op):
    """An op whose C code runs on all cores (OpenMP) and writes its outputs with
    `iaf_output`; its C code's version follows its module's source and this one's."""

    def c_headers(self):
        return ["<math.h>", "<omp.h>", "<string.h>"]

    def c_compile_args(self):
        return ["-fopenmp"]

    def c_support_code(self):
        return OUTPUT_ARRAY

    def c_code_cache_version(self):
        return c_code_version(sys.modules[type(self).__module__].__file__, __file__)
