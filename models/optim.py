"""AdaMax with Polyak averaging over the flat parameter buffers (docs/model.md §10)."""
import numpy as np

from layers import ops
from layers.runtime.backend import T, floatX, theano

# The floor of AdaMax's max-norm u: its initial value, and what |g| is raised by.
U_FLOOR = 1e-8

class GradientVector:
    """A flat float32 vector: every parameter's gradient in the buffer's order
    (``gradient``, and ``parts``: one view per parameter), then named numbers that travel
    with it when processes add their vectors up (docs/model.md §11): the minibatch's
    summed ``cost`` and the caller's own ``slots``, read and written by name
    (``vector["cost"]``)."""

    def __init__(self, params, slots=()):
        self.slots = ("cost",) + tuple(slots)
        self.array = np.zeros(params.size + len(self.slots), floatX)
        self.gradient = self.array[:params.size]
        self.parts = list(params.split(self.gradient).values())

    def __getitem__(self, slot):
        return self.array[len(self.gradient) + self.slots.index(slot)]

    def __setitem__(self, slot, value):
        self.array[len(self.gradient) + self.slots.index(slot)] = value

    def clear_slots(self):
        self.array[len(self.gradient):] = 0


class AdaMaxPolyak:
    """Update rules ``m <- (1-beta1) m + beta1 g``, ``u <- max((1-beta2) u, |g| + U_FLOOR)``,
    ``w <- w - alpha m / u`` (masked weights re-masked) and
    ``w_avg <- beta2 w_old + (1-beta2) w_avg``, with no bias correction (as the original).

    ``params`` and ``averages`` are `layers.parameters.FlatParameters`; the moments are flat
    shared vectors held here; ``masks`` maps a weight's name to its mask. If the cost or any
    gradient element is not finite, the update leaves every variable as it was.
    """

    def __init__(self, params, averages, masks, alpha, beta1, beta2):
        self.params, self.averages = params, averages
        self.alpha, self.beta1, self.beta2 = alpha, beta1, beta2
        self.m = theano.shared(np.zeros(params.size, floatX), name="adamax_m", borrow=True)
        self.u = theano.shared(np.full(params.size, U_FLOOR, floatX), name="adamax_u",
                               borrow=True)
        keep = np.ones(params.size, np.uint8)
        for name, mask in masks.items():
            start = params.offsets[name]
            keep[start:start + mask.size] = mask.ravel() != 0
        self.keep = theano.shared(keep, name="adamax_keep", borrow=True)

    @property
    def state(self):
        """The shared variables a step changes, by the names checkpoints give them."""
        return {"params": self.params.shared, "avg_params": self.averages.shared,
                "adamax_m": self.m, "adamax_u": self.u}

    def gradients(self, cost):
        """The symbolic gradient of ``cost`` for every parameter, in the buffer's order."""
        return T.grad(cost, [self.params[name] for name in self.params],
                      disconnected_inputs="ignore")

    def update(self, vector):
        """The updates of one step from a symbolic `GradientVector` array, and whether it
        was applied (0: something in it was not finite, nothing changed)."""
        variables = list(self.state.values())
        new_values, applied = ops.adamax_polyak_step(
            *variables, self.keep, vector, self.alpha, self.beta1, self.beta2, U_FLOOR)
        return list(zip(variables, new_values)), applied
