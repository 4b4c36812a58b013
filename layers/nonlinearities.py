"""The parameter-free nonlinearities of the original (``margs.nl``, docs/model.md §7)."""
from . import ops
from .runtime.backend import T

NONLINEARITIES = {
    "none": lambda h: h,
    "tanh": T.tanh,
    "relu": lambda h: h * (h >= 0.0),
    "shiftedrelu": lambda h: T.switch(h < -1.0, -1.0, h),
    "leakyrelu": lambda h: 0.01 * h * (h < 0.0) + h * (h >= 0.0),
    "elu": ops.elu,
    "softplus": T.nnet.softplus,
}


def nonlinearity(name):
    """The function for ``name`` (case-insensitive); a clear error lists the valid names."""
    key = str(name).lower()
    if key not in NONLINEARITIES:
        raise ValueError(f"unknown nonlinearity nl={name!r}; valid: {', '.join(NONLINEARITIES)}")
    return NONLINEARITIES[key]
