"""Named parameters stored in one flat float32 buffer.

Layers register each parameter's initial value by name while they are built (a plain
``name -> array`` dict). `FlatParameters` then keeps all of them in one Theano shared
vector; in a graph each parameter is a reshaped slice of it (a view, no copy). So the
optimiser updates and averages every parameter in one pass over one buffer, the gradient
is one vector, and processes add their gradients in one call (docs/model.md §10, §11).
"""
from collections import OrderedDict

import numpy as np

from . import ops
from .runtime.backend import floatX, theano


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
            views = ops.parameter_views(self.shared, self.shapes.values())
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
