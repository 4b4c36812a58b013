"""Weight normalisation as one op: ``kernel = u / (||u|| + eps) * exp(3 s)`` per filter,
with ``u = m * v`` for a masked convolution's fixed mask ``m`` (else ``u = v``).

The plain Theano expression (`plain`) becomes about ten elementwise and reduction nodes
per convolution, forward and backward, each a pass over the weights; this op does the
forward in one pass and the gradient in two. Norms and dot products are accumulated in
double precision, as Theano's float32 sums are. docs/model.md §2, §3.
"""
from ..runtime.backend import T, gof, theano
from .c_support import OpenMPOp

# The arrays of both ops: v, s and the mask m (NULL when there is none).
_INPUTS = """
    PyArrayObject* v = PyArray_GETCONTIGUOUS(%(v)s);
    PyArrayObject* s = PyArray_GETCONTIGUOUS(%(s)s);
    const int masked = %(masked)d;
    PyArrayObject* m = %(get_m)s;
    int ok = v && s && (m || !masked) && PyArray_DIMS(s)[0] == PyArray_DIMS(v)[0]
             && (!m || PyArray_SIZE(m) == PyArray_SIZE(v));
    if (v && s && (m || !masked) && !ok)
        PyErr_SetString(PyExc_ValueError, "%(op)s: v, s and the mask do not fit");
    const long F = ok ? PyArray_DIMS(v)[0] : 0, R = F ? PyArray_SIZE(v) / F : 0;
    const float* vd = ok ? (const float*)PyArray_DATA(v) : NULL;
    const float* sd = ok ? (const float*)PyArray_DATA(s) : NULL;
    const float* md = m ? (const float*)PyArray_DATA(m) : NULL;
"""

_FORWARD = """
{
    %(inputs)s
    ok = ok && iaf_output(&%(kernel)s, PyArray_NDIM(v), PyArray_DIMS(v)) == 0;
    if (ok) {
        float* kd = (float*)PyArray_DATA(%(kernel)s);
        #pragma omp parallel for schedule(static)
        for (long f = 0; f < F; ++f) {
            double sum = 0.0;
            for (long r = f * R; r < (f + 1) * R; ++r) {
                const float u = md ? md[r] * vd[r] : vd[r];
                sum += (double)u * u;
            }
            const float scale = expf(3.0f * sd[f]) / (sqrtf((float)sum) + %(eps)r);
            for (long r = f * R; r < (f + 1) * R; ++r) kd[r] = (md ? md[r] * vd[r] : vd[r]) * scale;
        }
    }
    Py_XDECREF(v);
    Py_XDECREF(s);
    Py_XDECREF(m);
    if (!ok) %(fail)s
}
"""

# With n = ||u||, d = n + eps, e = exp(3 s) and a = sum(g * u) per filter:
#   dL/du = (e / d) g - (e a / (d^2 n)) u   (the second term is 0 when u is 0)
#   dL/dv = m dL/du,   dL/ds = 3 e a / d
_GRAD = """
{
    %(inputs)s
    PyArrayObject* g = PyArray_GETCONTIGUOUS(%(g)s);
    ok = ok && g && PyArray_SIZE(g) == PyArray_SIZE(v);
    if (g && v && !ok && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "%(op)s: v and its gradient differ in size");
    ok = ok && iaf_output(&%(gv)s, PyArray_NDIM(v), PyArray_DIMS(v)) == 0
            && iaf_output(&%(gs)s, 1, PyArray_DIMS(s)) == 0;
    if (ok) {
        const float* gd = (const float*)PyArray_DATA(g);
        float* gvd = (float*)PyArray_DATA(%(gv)s);
        float* gsd = (float*)PyArray_DATA(%(gs)s);
        #pragma omp parallel for schedule(static)
        for (long f = 0; f < F; ++f) {
            double sum = 0.0, dot = 0.0;
            for (long r = f * R; r < (f + 1) * R; ++r) {
                const float u = md ? md[r] * vd[r] : vd[r];
                sum += (double)u * u;
                dot += (double)gd[r] * u;
            }
            const float n = sqrtf((float)sum), d = n + %(eps)r, e = expf(3.0f * sd[f]);
            const float a = (float)dot, along_g = e / d;
            const float along_v = n > 0.0f ? e * a / (d * d * n) : 0.0f;
            for (long r = f * R; r < (f + 1) * R; ++r) {
                const float du = along_g * gd[r] - along_v * (md ? md[r] * vd[r] : vd[r]);
                gvd[r] = md ? md[r] * du : du;
            }
            gsd[f] = 3.0f * e * a / d;
        }
    }
    Py_XDECREF(v);
    Py_XDECREF(s);
    Py_XDECREF(m);
    Py_XDECREF(g);
    if (!ok) %(fail)s
}
"""


class _WeightNormOp(OpenMPOp):
    __props__ = ("eps",)

    def __init__(self, eps):
        self.eps = float(eps)

    def _arrays(self, node, inputs, sub):
        """The template values of v, s and the mask (the last input, if the node has it)."""
        v, s = inputs[:2]
        masked = len(node.inputs) == self.n_inputs + 1
        get_m = f"PyArray_GETCONTIGUOUS({inputs[-1]})" if masked else "NULL"
        op = type(self).__name__
        return dict(inputs=_INPUTS % dict(v=v, s=s, masked=masked, get_m=get_m, op=op),
                    op=op, eps=self.eps, fail=sub["fail"])


def _float32(*variables):
    variables = [T.as_tensor_variable(a) for a in variables]
    if any(a.dtype != "float32" for a in variables):
        raise TypeError(f"weight norm takes float32 tensors, not {[a.type for a in variables]}")
    return variables


class WeightNorm(_WeightNormOp):
    """kernel (F, ...) = u / (||u|| + eps) * exp(3 s) with the norm over each filter, from
    v, s (F,) and, optionally, the mask m (u = m v)."""

    n_inputs = 2

    def make_node(self, v, s, *mask):
        v, s, *mask = _float32(v, s, *mask)
        if s.ndim != 1 or v.ndim < 1:
            raise TypeError(f"WeightNorm takes v (F, ...) and s (F,), not {v.type}, {s.type}")
        return gof.Apply(self, [v, s] + mask, [v.type()])

    def c_code(self, node, name, inputs, outputs, sub):
        return _FORWARD % dict(self._arrays(node, inputs, sub), kernel=outputs[0])

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    def connection_pattern(self, node):
        return [[True], [True]] + [[False]] * (len(node.inputs) - 2)

    def grad(self, inputs, output_grads):
        v, s, *mask = inputs
        disconnected = [theano.gradient.DisconnectedType()() for _ in mask]
        return WeightNormGrad(self.eps)(v, s, output_grads[0], *mask) + disconnected


class WeightNormGrad(_WeightNormOp):
    """(dL/dv, dL/ds) of `WeightNorm` from v, s, dL/dkernel and the mask if any."""

    n_inputs = 3

    def make_node(self, v, s, g, *mask):
        v, s, g, *mask = _float32(v, s, g, *mask)
        return gof.Apply(self, [v, s, g] + mask, [v.type(), s.type()])

    def c_code(self, node, name, inputs, outputs, sub):
        gv, gs = outputs
        return _GRAD % dict(self._arrays(node, inputs, sub), g=inputs[2], gv=gv, gs=gs)

    def infer_shape(self, node, shapes):
        return [shapes[0], shapes[1]]


def custom(v, s, eps, mask):
    return WeightNorm(eps)(v, s, *([] if mask is None else [T.constant(mask)]))


def plain(v, s, eps, mask):
    if mask is not None:
        v = mask * v
    norm = T.sqrt(T.sqr(v).sum(axis=(1, 2, 3), keepdims=True))
    return v / (norm + eps) * T.exp(3 * s).dimshuffle(0, "x", "x", "x")
