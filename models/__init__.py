"""The ResNet VAE with IAF posteriors, composed from `layers`."""
from .config import (DOWNSAMPLE_TYPES, LIKELIHOODS, POSTERIORS, PRIORS, WEIGHTSHARING,
                     ConfigError, ModelConfig)
from .resnet_vae import ResNetVAE
from .weights import WeightsError, load_ndict, save_ndict

__all__ = ["DOWNSAMPLE_TYPES", "LIKELIHOODS", "POSTERIORS", "PRIORS", "WEIGHTSHARING",
           "ConfigError", "ModelConfig", "ResNetVAE", "WeightsError", "load_ndict", "save_ndict"]
