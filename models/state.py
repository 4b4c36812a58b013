"""What training changes and keeps: the parameters, their Polyak averages and AdaMax's
moments as flat shared vectors (docs/model.md §10), with their values in and out: the
original's weights (names -> arrays) and a checkpoint's arrays."""
import numpy as np
from layers.parameters import FlatParameters

from .names import check_weights_fit
from .optim import AdaMaxPolyak


class TrainingState:
    """A `ResNetVAE`'s trained numbers: ``params`` (initialised from the model's
    ``initial``), ``avg_params`` (their Polyak averages) and the ``optimiser`` that updates
    them with its moments."""

    def __init__(self, model):
        cfg = model.config
        self.params = FlatParameters.from_values(model.initial, "params")
        self.avg_params = self.params.like("avg_params")
        masks = {conv.w_name: conv.mask for conv in model.masked_convs}
        self.optimiser = AdaMaxPolyak(self.params, self.avg_params, masks, cfg.alpha,
                                      cfg.beta1, cfg.beta2)

    def weights(self, averaged=True):
        """Every parameter (or its average) as a ``name -> array`` dict of copies."""
        return (self.avg_params if averaged else self.params).values()

    def set_weights(self, values, complete=True, source=None):
        """Load a name -> array dict into the parameters and their averages.

        Names in ``values`` the model does not have are ignored, as by the original; a
        parameter missing from ``values`` is an error unless ``complete=False``. An error
        says which model options the weights (from file ``source``) seem to differ in.
        """
        missing = check_weights_fit(values, self.params.shapes, complete, source)
        for target in (self.params, self.avg_params):
            target.set_values(values)
        return missing

    def arrays(self):
        """Everything a step changes, as flat arrays (copies), by name: a checkpoint's."""
        return {name: var.get_value() for name, var in self.optimiser.state.items()}

    def set_arrays(self, arrays):
        """Put back what `arrays` gave; refuses arrays of another shape."""
        for name, var in self.optimiser.state.items():
            if np.shape(arrays[name]) != var.get_value(borrow=True).shape:
                raise ValueError(f"{name} of shape {np.shape(arrays[name])} cannot replace "
                                 f"one of shape {var.get_value(borrow=True).shape}")
            var.set_value(np.array(arrays[name], dtype=var.dtype), borrow=True)
