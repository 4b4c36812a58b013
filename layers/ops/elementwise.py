"""ELU and its derivative as vectorised ops over all cores (C from `c_support`)."""
from ..runtime.backend import T, gof
from .c_support import ELU_FUNCTIONS, OUTPUT_ARRAY, OpenMPOp


_LOOP = """
{
    PyArrayObject* x = PyArray_GETCONTIGUOUS(%(x)s);
    PyArrayObject* g = PyArray_GETCONTIGUOUS(%(g)s);
    int ok = x && g;
    if (ok && PyArray_SIZE(g) != PyArray_SIZE(x)) {
        PyErr_SetString(PyExc_ValueError, "%(op)s: x and its gradient differ in size");
        ok = 0;
    }
    ok = ok && iaf_output(&%(out)s, PyArray_NDIM(x), PyArray_DIMS(x)) == 0;
    if (ok) {
        const float* xd = (const float*)PyArray_DATA(x);
        const float* gd = (const float*)PyArray_DATA(g);
        float* od = (float*)PyArray_DATA(%(out)s);
        const npy_intp n = PyArray_SIZE(x);
        #pragma omp parallel for schedule(static)
        for (npy_intp i = 0; i < n; ++i) od[i] = %(expression)s;
    }
    Py_XDECREF(x);
    Py_XDECREF(g);
    if (!ok) %(fail)s
}
"""


class _ELUOp(OpenMPOp):
    __props__ = ()

    def make_node(self, *inputs):
        inputs = [T.as_tensor_variable(v) for v in inputs]
        if any(v.dtype != "float32" for v in inputs):
            raise TypeError(f"{type(self).__name__} takes float32 tensors")
        return gof.Apply(self, inputs, [inputs[0].type()])

    def infer_shape(self, node, shapes):
        return [shapes[0]]

    def c_support_code(self):
        return ELU_FUNCTIONS + OUTPUT_ARRAY

    def _loop(self, inputs, outputs, sub, g, expression):
        return _LOOP % dict(x=inputs[0], g=g, out=outputs[0], op=type(self).__name__,
                            fail=sub["fail"], expression=expression)


class ELU(_ELUOp):
    """``elu(x)``, elementwise; a convolution it feeds folds it in (`rewrites`)."""

    def c_code(self, node, name, inputs, outputs, sub):
        return self._loop(inputs, outputs, sub, g=inputs[0], expression="iaf_elu(xd[i])")

    def grad(self, inputs, output_grads):
        return [ELUGrad()(inputs[0], output_grads[0])]


class ELUGrad(_ELUOp):
    """``g * elu'(x)`` from x and the output gradient g."""

    def c_code(self, node, name, inputs, outputs, sub):
        return self._loop(inputs, outputs, sub, g=inputs[1],
                          expression="gd[i] * iaf_elu_slope(xd[i])")


def custom(h):
    return ELU()(h)


def plain(h):
    return T.switch(h < 0.0, T.expm1(h), h)
