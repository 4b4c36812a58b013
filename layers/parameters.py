"""Named parameters stored in one flat float32 buffer.

Layers register each parameter's initial value by name while they are built (a plain
``name -> array`` dict). `FlatParameters` then keeps all of them in one Theano shared
vector; in a graph each parameter is a reshaped slice of it (a view, no copy). So the
optimiser updates and averages every parameter in one pass over one buffer, the gradient
is one vector, and processes add their gradients in one call (docs/model.md §10, §11).
"""
from collections import OrderedDict

import numpy as np

from .backend import T, c_code_version, floatX, gof, theano


class ParameterViews(gof.Op):
    """Every parameter as a view of the flat buffer, from one node: a slice and a reshape
    per parameter would be ~1,000 nodes for Table 3, each of which every compiled function
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


class FlatParameters:
    """``params[name]`` is the symbolic parameter; `values` / `set_values` read and write
    the numbers; `buffer` is the flat array itself (``name`` names the shared vector)."""

    def __init__(self, shapes, flat, name):
        self.shapes = OrderedDict(shapes)
        sizes = [int(np.prod(s)) for s in self.shapes.values()]
        self.offsets = OrderedDict(zip(self.shapes, np.cumsum([0] + sizes[:-1]).tolist()))
        self.size = sum(sizes)
        self.shared = theano.shared(np.asarray(flat, floatX), name=name, borrow=True)
        self._views = None  # name -> symbolic view, made on first use

    @classmethod
    def from_values(cls, initial, name):
        """Parameters with the values of a ``name -> array`` dict, in its order."""
        flat = np.concatenate([np.ravel(v) for v in initial.values()])
        return cls([(k, np.shape(v)) for k, v in initial.items()], flat, name)

    def like(self, name):
        """Another set of the same parameters (names and layout), holding these values."""
        return FlatParameters(self.shapes, self.buffer.copy(), name)

    def _slice(self, name):
        start = self.offsets[name]
        return slice(start, start + int(np.prod(self.shapes[name])))

    def __getitem__(self, name):
        """The symbolic parameter (the views are made when first asked for: a start from
        cached compiled functions never needs them)."""
        if self._views is None:
            views = ParameterViews(self.shapes.values())(self.shared, return_list=True)
            self._views = dict(zip(self.shapes, views))
        return self._views[name]

    def __contains__(self, name):
        return name in self.shapes

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self):
        return len(self.shapes)

    def keys(self):
        return self.shapes.keys()

    @property
    def buffer(self):
        """The flat float32 array the graphs read (not a copy: writes to it are seen)."""
        return self.shared.get_value(borrow=True)

    def split(self, flat):
        """A flat vector in buffer order (e.g. a gradient) as ``name -> array`` views."""
        return OrderedDict((k, flat[self._slice(k)].reshape(s)) for k, s in self.shapes.items())

    def values(self):
        """Every parameter as a ``name -> array`` dict of copies."""
        return OrderedDict((k, v.copy()) for k, v in self.split(self.buffer).items())

    def set_values(self, values):
        """Write the entries of a ``name -> array`` dict (names not held are ignored)."""
        buffer = self.buffer
        for name, value in values.items():
            if name in self.shapes:
                buffer[self._slice(name)] = np.ravel(value)
        self.shared.set_value(buffer, borrow=True)

    def set_buffer(self, flat):
        if np.shape(flat) != (self.size,):
            raise ValueError(f"a parameter buffer of shape {np.shape(flat)} cannot replace "
                             f"one of {self.size} values")
        self.shared.set_value(np.array(flat, dtype=floatX), borrow=True)
