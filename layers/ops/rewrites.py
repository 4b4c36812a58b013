"""Graph rewrites that fold an ELU into the convolution it feeds, in every pass.

Model code writes ``conv(elu(x))``. When a compiled graph holds our ELU op feeding our
convolution op, Theano's optimiser (with these rewrites registered) gives the convolution
``x`` itself and the option to apply ELU while it reads it, and in the gradient, where
``ELUGrad`` would multiply the convolution's input gradient by ELU's slope, lets the
input-gradient pass do that multiplication. ELU's output is then no graph variable kept
from the forward pass to the backward pass: the passes that read it compute it from ``x``
(the weight-gradient pass again), which saves its memory, not passes over memory.
"""
from ..runtime.backend import gof, theano
from .elementwise import ELU, ELUGrad
from .onednn_conv import OnednnConv, OnednnConvGradInputs, OnednnConvGradWeights


def _elu_argument(var):
    """``x`` if ``var`` is our ``ELU(x)``, else None."""
    node = var.owner
    return node.inputs[0] if node is not None and isinstance(node.op, ELU) else None


def _with_elu_input(op):
    return type(op)(**op.options(elu_input=True))


@gof.opt.local_optimizer([OnednnConv, OnednnConvGradWeights])
def fold_elu_into_convolution(node):
    """``conv(ELU(x), ...)`` -> ``conv_with_elu_input(x, ...)``, for the forward pass and
    the weights' gradient (both read the convolution's input)."""
    x = None if node.op.elu_input else _elu_argument(node.inputs[0])
    if x is None:
        return False
    return _with_elu_input(node.op)(x, *node.inputs[1:], return_list=True)


@gof.opt.local_optimizer([ELUGrad])
def fold_elu_slope_into_input_gradient(node):
    """``ELUGrad(x, grad_inputs(w, gy, ELU(x)))`` -> ``grad_inputs_with_elu_input(w, gy, x)``
    when that input gradient is used nowhere else."""
    x, gradient = node.inputs
    source = gradient.owner
    if source is None or not isinstance(source.op, OnednnConvGradInputs) or \
            source.op.elu_input or len(gradient.clients) != 1:
        return False
    w, gy, conv_input = source.inputs
    if _elu_argument(conv_input) is not x:
        return False
    return [_with_elu_input(source.op)(w, gy, x)]


def register():
    """Add the rewrites to Theano's optimiser (for every mode that runs 'fast_run'),
    after the graph's duplicate nodes are merged and before elementwise fusion."""
    optdb = theano.compile.optdb
    if "iaf_fold_elu" not in optdb.__db__:
        rewrites = gof.opt.LocalOptGroup(fold_elu_into_convolution,
                                         fold_elu_slope_into_input_gradient)
        optdb.register("iaf_fold_elu", gof.opt.TopoOptimizer(rewrites), 2.5, "fast_run")
