"""Theano building blocks of the IAF ResNet VAE. Importing this configures Theano first."""
from . import backend  # noqa: F401  (must run before anything imports theano)
from .conv import Conv2d, DataInit, avg_pool2, depth_to_space, upsample_nn2
from .distributions import bernoulli_logps, discretized_logistic_logps, gaussian_diag_logps
from .masked import IAFNetwork, MaskedConv2d, MaskedResNet, ar_mask
from .nonlinearities import NONLINEARITIES, nonlinearity

__all__ = ["Conv2d", "DataInit", "avg_pool2", "depth_to_space", "upsample_nn2",
           "bernoulli_logps", "discretized_logistic_logps", "gaussian_diag_logps",
           "IAFNetwork", "MaskedConv2d", "MaskedResNet", "ar_mask",
           "NONLINEARITIES", "nonlinearity"]
