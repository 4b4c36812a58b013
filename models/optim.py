"""AdaMax with Polyak averaging over the flat parameter buffers (docs/model.md §10)."""
from collections import OrderedDict

import numpy as np
from layers.adamax import AdaMaxPolyakStep
from layers.backend import CUSTOM_OPS, IfElse, T, floatX, theano


# Where the flat gradient vector (`AdaMaxPolyak.gradient`) keeps, after the gradient of
# every parameter, the summed cost and two free slots for the caller.
COST, FREE_SLOTS = -3, (-2, -1)


class AdaMaxPolyak:
    """Update rules ``m <- (1-beta1) m + beta1 g``, ``u <- max((1-beta2) u, |g| + 1e-8)``,
    ``w <- w - alpha m / u`` (masked weights re-masked) and
    ``w_avg <- beta2 w_old + (1-beta2) w_avg``, with no bias correction (as the original).

    ``params`` and ``averages`` are `layers.parameters.FlatParameters`; the moments are flat
    shared vectors held here, so a checkpoint can save them; ``masks`` maps a weight's
    name to its mask. A training step computes `gradients`, packs them with `flat_gradient`
    into one vector (which processes may add together) and applies it with the compiled
    `update_function`. If the cost or any gradient element is not finite, the update leaves
    every variable as it was.
    """

    custom_op = CUSTOM_OPS  # False: the plain Theano update the C op is tested against

    def __init__(self, params, averages, masks, alpha=0.002, beta1=0.1, beta2=0.001):
        self.params, self.averages = params, averages
        self.alpha, self.beta1, self.beta2 = alpha, beta1, beta2
        self.m = theano.shared(np.zeros(params.size, floatX), name="adamax_m", borrow=True)
        self.u = theano.shared(np.full(params.size, 1e-8, floatX), name="adamax_u",
                               borrow=True)
        keep = np.ones(params.size, np.uint8)
        for name, mask in masks.items():
            start = params.offsets[name]
            keep[start:start + mask.size] = mask.ravel() != 0
        self.keep = theano.shared(keep, name="adamax_keep", borrow=True)
        self._flat = None  # the reused gradient vector of `flat_gradient`, and its parts

    @property
    def gradient_size(self):
        return self.params.size - COST

    def gradients(self, cost):
        """The symbolic gradient of ``cost`` for every parameter, in the buffer's order."""
        return T.grad(cost, [self.params[name] for name in self.params],
                      disconnected_inputs="ignore")

    def flat_gradient(self, gradients, cost):
        """``[gradients..., cost, 0, 0]``: the values of `gradients` as one flat vector in
        the parameters' buffer order, then the summed cost (so that its finiteness is checked
        with the gradient's) and two free slots for the caller (flags summed across
        processes). The vector is kept and reused: valid until the next call.

        A gradient that is already its part of the vector (written there by the function
        that computed it, see `place_gradient_outputs`) is not copied."""
        flat, parts = self._flat_parts()
        for gradient, part in zip(gradients, parts):
            if gradient is not part:
                part[...] = gradient
        flat[COST:] = cost, 0, 0
        return flat

    def place_gradient_outputs(self, storage):
        """Put the parts of the flat gradient vector into the output ``storage`` (Theano
        containers, one per parameter) of a compiled function returning the gradients
        (borrowed): ops that reuse their output's memory then write the gradients straight
        into the vector, which saves a copy of all of them and their memory."""
        for container, part in zip(storage, self._flat_parts()[1]):
            container.storage[0] = part

    def _flat_parts(self):
        """The reused flat vector, and each parameter's part of it (a view)."""
        if self._flat is None:
            flat = np.zeros(self.gradient_size, floatX)
            self._flat = flat, list(self.params.split(flat).values())
        return self._flat

    def update_function(self):
        """A compiled ``f(gradient vector) -> applied`` that updates every buffer in place."""
        g = T.vector("gradient", dtype=floatX)
        variables = [self.params.shared, self.averages.shared, self.m, self.u]
        if self.custom_op:
            *new_values, applied = AdaMaxPolyakStep(self.alpha, self.beta1, self.beta2)(
                *variables, self.keep, g)
        else:
            new_values, applied = self._plain_update(g)
        return theano.function([g], applied, updates=OrderedDict(zip(variables, new_values)),
                               accept_inplace=True)  # the op updates the buffers in place

    def _plain_update(self, g):
        """The same update in plain Theano (the version the C op is tested against)."""
        w, avg, m, u = self.params.shared, self.averages.shared, self.m, self.u
        finite = T.all(~(T.isnan(g) | T.isinf(g)))
        grad = g[:self.params.size]
        m_new = (1 - self.beta1) * m + self.beta1 * grad
        u_new = T.maximum((1 - self.beta2) * u, abs(grad) + 1e-8)
        w_new = T.switch(self.keep, w - self.alpha * m_new / u_new, 0)
        avg_new = self.beta2 * w + (1 - self.beta2) * avg
        new_values = [w_new, avg_new, m_new, u_new]
        chosen = IfElse(n_outs=4)(finite, *new_values, w, avg, m, u, return_list=True)
        return chosen, finite

    def state(self):
        """The moments as flat arrays."""
        return {"adamax_m": self.m.get_value(), "adamax_u": self.u.get_value()}

    def set_state(self, state):
        for name, var in (("adamax_m", self.m), ("adamax_u", self.u)):
            var.set_value(np.asarray(state[name], dtype=floatX))
