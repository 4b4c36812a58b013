"""Weight normalisation as one op: ``kernel = v / (||v|| + eps) * exp(3 s)`` per filter.

The plain Theano expression (``Conv2d.custom_ops = False``) becomes about ten elementwise
and reduction nodes per convolution, forward and backward, each a pass over the weights;
this op does the forward in one pass and the gradient in two. Norms and dot products are
accumulated in double precision, as Theano's float32 sums are. docs/model.md §2.
"""
from .backend import T, c_code_version, gof
from .c_support import OUTPUT_ARRAY

_FORWARD = """
{
    PyArrayObject* v = PyArray_GETCONTIGUOUS(%(v)s);
    PyArrayObject* s = PyArray_GETCONTIGUOUS(%(s)s);
    int ok = v && s && PyArray_DIMS(s)[0] == PyArray_DIMS(v)[0];
    if (v && s && !ok)
        PyErr_SetString(PyExc_ValueError, "WeightNorm: v and s have different filter counts");
    ok = ok && iaf_output(&%(kernel)s, PyArray_NDIM(v), PyArray_DIMS(v)) == 0;
    if (ok) {
        const long F = PyArray_DIMS(v)[0], R = F ? PyArray_SIZE(v) / F : 0;
        const float* vd = (const float*)PyArray_DATA(v);
        const float* sd = (const float*)PyArray_DATA(s);
        float* kd = (float*)PyArray_DATA(%(kernel)s);
        #pragma omp parallel for schedule(static)
        for (long f = 0; f < F; ++f) {
            const float* vf = vd + f * R;
            double sum = 0.0;
            for (long r = 0; r < R; ++r) sum += (double)vf[r] * vf[r];
            const float scale = expf(3.0f * sd[f]) / (sqrtf((float)sum) + %(eps)r);
            for (long r = 0; r < R; ++r) kd[f * R + r] = vf[r] * scale;
        }
    }
    Py_XDECREF(v);
    Py_XDECREF(s);
    if (!ok) %(fail)s
}
"""

# With n = ||v||, d = n + eps, e = exp(3 s) and a = sum(g * v) per filter:
#   dL/dv = (e / d) g - (e a / (d^2 n)) v   (the second term is 0 when v is 0)
#   dL/ds = 3 e a / d
_GRAD = """
{
    PyArrayObject* v = PyArray_GETCONTIGUOUS(%(v)s);
    PyArrayObject* s = PyArray_GETCONTIGUOUS(%(s)s);
    PyArrayObject* g = PyArray_GETCONTIGUOUS(%(g)s);
    int ok = v && s && g && PyArray_SIZE(g) == PyArray_SIZE(v);
    if (v && s && g && !ok)
        PyErr_SetString(PyExc_ValueError, "WeightNormGrad: v and its gradient differ in size");
    ok = ok && iaf_output(&%(gv)s, PyArray_NDIM(v), PyArray_DIMS(v)) == 0
            && iaf_output(&%(gs)s, 1, PyArray_DIMS(s)) == 0;
    if (ok) {
        const long F = PyArray_DIMS(v)[0], R = F ? PyArray_SIZE(v) / F : 0;
        const float* vd = (const float*)PyArray_DATA(v);
        const float* sd = (const float*)PyArray_DATA(s);
        const float* gd = (const float*)PyArray_DATA(g);
        float* gvd = (float*)PyArray_DATA(%(gv)s);
        float* gsd = (float*)PyArray_DATA(%(gs)s);
        #pragma omp parallel for schedule(static)
        for (long f = 0; f < F; ++f) {
            const float* vf = vd + f * R;
            const float* gf = gd + f * R;
            double sum = 0.0, dot = 0.0;
            for (long r = 0; r < R; ++r) {
                sum += (double)vf[r] * vf[r];
                dot += (double)gf[r] * vf[r];
            }
            const float n = sqrtf((float)sum), d = n + %(eps)r, e = expf(3.0f * sd[f]);
            const float a = (float)dot, along_g = e / d;
            const float along_v = n > 0.0f ? e * a / (d * d * n) : 0.0f;
            for (long r = 0; r < R; ++r) gvd[f * R + r] = along_g * gf[r] - along_v * vf[r];
            gsd[f] = 3.0f * e * a / d;
        }
    }
    Py_XDECREF(v);
    Py_XDECREF(s);
    Py_XDECREF(g);
    if (!ok) %(fail)s
}
"""


class _WeightNormOp(gof.Op):
    __props__ = ("eps",)

    def __init__(self, eps):
        self.eps = float(eps)

    def c_headers(self):
        return ["<math.h>", "<omp.h>"]

    def c_compile_args(self):
        return ["-fopenmp"]

    def c_support_code(self):
        return OUTPUT_ARRAY

    def c_code_cache_version(self):
        return c_code_version(_FORWARD + _GRAD + OUTPUT_ARRAY)


class WeightNorm(_WeightNormOp):
    """kernel (F, ...) = v / (||v|| + eps) * exp(3 s) with the norm over each filter."""

    def make_node(self, v, s):
        v, s = T.as_tensor_variable(v), T.as_tensor_variable(s)
        if v.dtype != "float32" or s.dtype != "float32" or s.ndim != 1 or v.ndim < 1:
            raise TypeError(f"WeightNorm takes float32 v (F, ...) and s (F,), not {v.type}, {s.type}")
        return gof.Apply(self, [v, s], [v.type()])

    def c_code(self, node, name, inputs, outputs, sub):
        v, s = inputs
        return _FORWARD % dict(v=v, s=s, kernel=outputs[0], eps=self.eps, fail=sub["fail"])

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    def grad(self, inputs, output_grads):
        return WeightNormGrad(self.eps)(*inputs, output_grads[0])


class WeightNormGrad(_WeightNormOp):
    """(dL/dv, dL/ds) of `WeightNorm` from v, s and dL/dkernel."""

    def make_node(self, v, s, g):
        v, s, g = (T.as_tensor_variable(a) for a in (v, s, g))
        return gof.Apply(self, [v, s, g], [v.type(), s.type()])

    def c_code(self, node, name, inputs, outputs, sub):
        v, s, g = inputs
        gv, gs = outputs
        return _GRAD % dict(v=v, s=s, g=g, gv=gv, gs=gs, eps=self.eps, fail=sub["fail"])

    def infer_shape(self, node, shapes):
        return [shapes[0], shapes[1]]


def weight_norm(v, s, eps):
    """``v / (sqrt(sum(v**2) over all but axis 0) + eps) * exp(3 s)``, s broadcast per filter."""
    return WeightNorm(eps)(v, s)
