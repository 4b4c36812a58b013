"""AdaMax with Polyak averaging, as the original trains (docs/model.md §10)."""
from collections import OrderedDict

import numpy as np

from layers.backend import IfElse, T, floatX, theano


def _zeros_like(var, fill=0.0):
    return theano.shared(np.full(var.get_value().shape, fill, dtype=floatX))


class AdaMaxPolyak:
    """Update rules ``m <- (1-beta1) m + beta1 g``, ``u <- max((1-beta2) u, |g| + 1e-8)``,
    ``w <- project(w - alpha m / u)`` and ``w_avg <- beta2 w_old + (1-beta2) w_avg``.

    There is no bias correction (the original has none). The moments ``m``, ``u`` are
    shared variables held here, so a checkpoint can save them. ``project`` re-masks the
    weights of masked convolutions. If the cost or any gradient is not finite, the step
    leaves every variable as it was (the caller sees the bad cost and decides).
    """

    def __init__(self, params, avg_params, alpha=0.002, beta1=0.1, beta2=0.001):
        self.params, self.avg_params = params, avg_params
        self.alpha, self.beta1, self.beta2 = alpha, beta1, beta2
        self.names = sorted(params)
        self.m = OrderedDict((n, _zeros_like(params[n])) for n in self.names)
        self.u = OrderedDict((n, _zeros_like(params[n], 1e-8)) for n in self.names)

    def updates(self, total_cost, project):
        """Updates minimising ``total_cost``; ``project[name]`` maps a new weight value."""
        grads = T.grad(total_cost, [self.params[n] for n in self.names],
                       disconnected_inputs="ignore")
        # One scalar: finite only if the cost and every gradient element are (a sum that
        # overflows is as bad a step). One lazy IfElse then keeps the graph small.
        total = total_cost + T.add(*[g.sum() for g in grads])
        finite = ~(T.isnan(total) | T.isinf(total))
        variables, new_values = [], []
        for name, g in zip(self.names, grads):
            w, m, u, w_avg = self.params[name], self.m[name], self.u[name], self.avg_params[name]
            m_new = (1 - self.beta1) * m + self.beta1 * g
            u_new = T.maximum((1 - self.beta2) * u, abs(g) + 1e-8)
            w_new = project.get(name, lambda v: v)(w - self.alpha * m_new / u_new)
            avg_new = self.beta2 * w + (1 - self.beta2) * w_avg
            variables += [m, u, w, w_avg]
            new_values += [m_new, u_new, w_new, avg_new]
        # Built as a view (``as_view=True``), i.e. what Theano's ``cond_make_inplace`` would
        # make of ``ifelse(finite, new_values, variables)``: letting the optimiser swap the
        # op itself costs ~9 s of compile (shape-feature checks on every output).
        chosen = IfElse(n_outs=len(variables), as_view=True)(
            finite, *new_values, *variables, return_list=True)
        updates = OrderedDict(zip(variables, chosen))
        return updates, finite

    def state(self):
        """Optimiser moments as name -> array dicts."""
        return {"m": {n: v.get_value() for n, v in self.m.items()},
                "u": {n: v.get_value() for n, v in self.u.items()}}

    def set_state(self, state):
        for key in ("m", "u"):
            for name, var in getattr(self, key).items():
                var.set_value(np.asarray(state[key][name], dtype=floatX))
