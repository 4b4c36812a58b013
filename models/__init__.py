"""The ResNet VAE with IAF posteriors, composed from `layers`."""
from .resnet_vae import (DOWNSAMPLE_TYPES, LIKELIHOODS, POSTERIORS, PRIORS, WEIGHTSHARING,
                         ConfigError, ResNetVAE)
from .weights import WeightsError, atomic_write, load_ndict, save_ndict

__all__ = ["DOWNSAMPLE_TYPES", "LIKELIHOODS", "POSTERIORS", "PRIORS", "WEIGHTSHARING",
           "ConfigError", "ResNetVAE", "WeightsError", "atomic_write", "load_ndict", "save_ndict"]
