"""The AdaMax + Polyak update (docs/model.md §10) as one C op over flat buffers.

Written with Theano's elementwise ops, the update is about ten nodes per parameter and
tensor (a pass over memory each), plus a guard that keeps everything unchanged when a
gradient is not finite. This op reads the gradient once to check it, then updates the
weights, their averages and both moments in place in a single parallel pass.
"""
from ..runtime.backend import IfElse, T, c_code_version, gof

FLOATS, FLAGS = T.TensorType("float32", (False,)), T.TensorType("uint8", (False,))

_C_CODE = """
{
    const npy_intp n = PyArray_DIMS(%(w)s)[0];
    int ok = 1;
    PyArrayObject* arrays[5] = {%(w)s, %(avg)s, %(m)s, %(u)s, %(g)s};
    for (int k = 0; k < 5; ++k)
        ok = ok && PyArray_IS_C_CONTIGUOUS(arrays[k]) && PyArray_NDIM(arrays[k]) == 1;
    ok = ok && PyArray_IS_C_CONTIGUOUS(%(keep)s) && PyArray_SIZE(%(keep)s) == n;
    for (int k = 1; k < 4; ++k) ok = ok && PyArray_DIMS(arrays[k])[0] == n;
    ok = ok && PyArray_DIMS(%(g)s)[0] >= n;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "AdaMaxPolyak: w, avg, m, u and keep need the same "
                        "length, the gradient at least that, all C-contiguous vectors");
        %(fail)s
    }
    float* w = (float*)PyArray_DATA(%(w)s);
    float* avg = (float*)PyArray_DATA(%(avg)s);
    float* m = (float*)PyArray_DATA(%(m)s);
    float* u = (float*)PyArray_DATA(%(u)s);
    const npy_uint8* keep = (const npy_uint8*)PyArray_DATA(%(keep)s);
    const float* g = (const float*)PyArray_DATA(%(g)s);
    const npy_intp n_check = PyArray_DIMS(%(g)s)[0];
    int finite = 1;
    #pragma omp parallel for schedule(static) reduction(&:finite)
    for (npy_intp i = 0; i < n_check; ++i) finite &= isfinite(g[i]) != 0;
    if (finite) {
        const float decay1 = (float)(1.0 - %(beta1)r), beta1 = (float)%(beta1)r;
        const float decay2 = (float)(1.0 - %(beta2)r), beta2 = (float)%(beta2)r;
        const float alpha = (float)%(alpha)r;
        #pragma omp parallel for schedule(static)
        for (npy_intp i = 0; i < n; ++i) {
            const float m_new = decay1 * m[i] + beta1 * g[i];
            const float u_new = fmaxf(decay2 * u[i], fabsf(g[i]) + (float)%(floor)r);
            const float w_old = w[i];
            const float w_new = w_old - alpha * m_new / u_new;
            w[i] = keep[i] ? w_new : 0.0f;
            avg[i] = beta2 * w_old + decay2 * avg[i];
            m[i] = m_new;
            u[i] = u_new;
        }
    }
    PyArrayObject* outputs[4] = {%(w)s, %(avg)s, %(m)s, %(u)s};
    PyArrayObject** targets[4] = {&%(w_out)s, &%(avg_out)s, &%(m_out)s, &%(u_out)s};
    for (int k = 0; k < 4; ++k) {
        Py_XDECREF(*targets[k]);
        *targets[k] = outputs[k];
        Py_INCREF(outputs[k]);
    }
    if (!%(applied)s) {
        %(applied)s = (PyArrayObject*)PyArray_EMPTY(0, NULL, NPY_INT8, 0);
        if (!%(applied)s) %(fail)s
    }
    *(npy_int8*)PyArray_DATA(%(applied)s) = finite;
}
"""


class AdaMaxPolyakStep(gof.Op):
    """``(w, avg, m, u, keep, g) -> (w, avg, m, u, applied)``, updating the first four in
    place: if every element of ``g`` is finite,

        m <- (1 - beta1) m + beta1 g,    u <- max((1 - beta2) u, |g| + floor),
        w <- (w - alpha m / u) where keep else 0,    avg <- beta2 w_old + (1 - beta2) avg

    over the first ``len(w)`` elements of ``g`` (any further elements, e.g. the cost, are
    only checked), and ``applied`` is 1; otherwise nothing changes and it is 0.
    ``keep`` (uint8) is 0 where a masked weight must stay zero.
    """

    __props__ = ("alpha", "beta1", "beta2", "floor")
    destroy_map = {0: [0], 1: [1], 2: [2], 3: [3]}

    def __init__(self, alpha, beta1, beta2, floor):
        self.alpha, self.beta1, self.beta2 = float(alpha), float(beta1), float(beta2)
        self.floor = float(floor)

    def make_node(self, w, avg, m, u, keep, g):
        inputs = [T.as_tensor_variable(v) for v in (w, avg, m, u, keep, g)]
        types = [v.type for v in inputs]
        if types != [FLOATS] * 4 + [FLAGS, FLOATS]:
            raise TypeError(f"AdaMaxPolyakStep takes float32 vectors and a uint8 keep mask, "
                            f"not {types}")
        outputs = [v.type() for v in inputs[:4]] + [T.TensorType("int8", ())()]
        return gof.Apply(self, inputs, outputs)

    def infer_shape(self, node, shapes):
        return shapes[:4] + [()]

    def c_code(self, node, name, inputs, outputs, sub):
        w, avg, m, u, keep, g = inputs
        w_out, avg_out, m_out, u_out, applied = outputs
        return _C_CODE % dict(w=w, avg=avg, m=m, u=u, keep=keep, g=g, w_out=w_out,
                              avg_out=avg_out, m_out=m_out, u_out=u_out, applied=applied,
                              alpha=self.alpha, beta1=self.beta1, beta2=self.beta2,
                              floor=self.floor, fail=sub["fail"])

    def c_headers(self):
        return ["<math.h>", "<omp.h>"]

    def c_compile_args(self):
        return ["-fopenmp"]

    def c_code_cache_version(self):
        return c_code_version(__file__)


def custom(w, avg, m, u, keep, g, alpha, beta1, beta2, floor):
    *new_values, applied = AdaMaxPolyakStep(alpha, beta1, beta2, floor)(w, avg, m, u, keep, g)
    return new_values, applied


def plain(w, avg, m, u, keep, g, alpha, beta1, beta2, floor):
    finite = T.all(~(T.isnan(g) | T.isinf(g)))
    grad = g[:w.shape[0]]
    m_new = (1 - beta1) * m + beta1 * grad
    u_new = T.maximum((1 - beta2) * u, abs(grad) + floor)
    w_new = T.switch(keep, w - alpha * m_new / u_new, 0)
    avg_new = beta2 * w + (1 - beta2) * avg
    chosen = IfElse(n_outs=4)(finite, w_new, avg_new, m_new, u_new, w, avg, m, u,
                              return_list=True)
    return chosen, finite
