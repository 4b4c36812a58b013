"""Every parameter as a view of the flat parameter buffer, from one node."""
import numpy as np

from ..runtime.backend import T, c_code_version, floatX, gof


class ParameterViews(gof.Op):
    """Views of consecutive parts of a flat vector, reshaped: a slice and a reshape per
    parameter would be ~1,000 nodes for Table 3, each of which every compiled function
    builds a thunk for when it is loaded."""

    __props__ = ("shapes",)

    def __init__(self, shapes):
        self.shapes = tuple(tuple(int(d) for d in shape) for shape in shapes)
        self.view_map = {k: [0] for k in range(len(self.shapes))}

    def make_node(self, flat):
        flat = T.as_tensor_variable(flat)
        if flat.type != T.TensorType(floatX, (False,)):
            raise TypeError(f"ParameterViews takes a {floatX} vector, not {flat.type}")
        # A dimension of size 1 is broadcastable, as T.reshape to a constant shape makes it.
        outputs = [T.TensorType(floatX, tuple(d == 1 for d in shape))() for shape in self.shapes]
        return gof.Apply(self, [flat], outputs)

    def perform(self, node, inputs, outputs):
        offset = 0
        for (out,), shape in zip(outputs, self.shapes):
            size = int(np.prod(shape))
            out[0] = inputs[0][offset:offset + size].reshape(shape)
            offset += size

    def infer_shape(self, node, shapes):
        return [shape for shape in self.shapes]

    def c_code(self, node, name, inputs, outputs, sub):
        (flat,), fail = inputs, sub["fail"]
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        views = [_VIEW % dict(out=out, nd=len(shape), dims=", ".join(map(str, shape)) or "0",
                              flat=flat, offset=offset, fail=fail)
                 for out, shape, offset in zip(outputs, self.shapes, np.cumsum([0] + sizes))]
        return _CHECK % dict(flat=flat, total=sum(sizes), fail=fail) + "".join(views)

    def c_code_cache_version(self):
        return c_code_version(__file__)


_CHECK = """
if (!PyArray_IS_C_CONTIGUOUS(%(flat)s) || PyArray_DIMS(%(flat)s)[0] != %(total)s) {
    PyErr_SetString(PyExc_ValueError, "ParameterViews: the buffer is not the contiguous "
                    "%(total)s values of the parameters");
    %(fail)s
}
"""

_VIEW = """{
    npy_intp dims[] = {%(dims)s};
    Py_XDECREF(%(out)s);
    %(out)s = (PyArrayObject*)PyArray_New(&PyArray_Type, %(nd)s, dims, NPY_FLOAT32, NULL,
        (float*)PyArray_DATA(%(flat)s) + %(offset)s, 0, NPY_ARRAY_CARRAY, NULL);
    if (!%(out)s) %(fail)s
    Py_INCREF(%(flat)s);
    PyArray_SetBaseObject(%(out)s, (PyObject*)%(flat)s);
}
"""


def custom(flat, shapes):
    return ParameterViews(shapes)(flat, return_list=True)


def plain(flat, shapes):
    offsets = np.cumsum([0] + [int(np.prod(shape)) for shape in shapes])
    return [flat[int(a):int(b)].reshape(shape) for a, b, shape in zip(offsets, offsets[1:], shapes)]
