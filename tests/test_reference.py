"""The Theano model computes the arithmetic of docs/model.md: for random (non-trivial)
weights, images and posterior noise, its evaluation outputs match an independent NumPy
forward pass (`tests/numpy_reference.py`, written from the document alone) to float32
rounding, for every posterior kind, every prior and the other options."""
import numpy as np
import pytest

from layers.runtime.backend import floatX
from models.config import ModelConfig
from models.resnet_vae import ResNetVAE
from models.trainer import Trainer

from numpy_reference import forward

TINY = dict(shape_x=(3, 8, 8), depths=[1, 1], n_h1=8, n_h2=8, n_z=4)

# Every posterior once, the priors diag/diag2/made in turn (down_tim needs diag), and
# among them: free bits on and off (kl_min=1 and 2 floor some feature maps but not all),
# pad_x, downsample_type='conv', every weight sharing, Bernoulli, every nonlinearity,
# depth_ar 0 and 2, 5x5 masked kernels (with the flipped mask), a 3x3 x_enc/x_dec, and
# n_z = n_h2 (one input channel per output group).
CONFIGS = [
    dict(posterior="up_diag", prior="diag", nl="relu", kl_min=0.0),
    dict(posterior="up_iaf1", prior="diag2", pad_x=2),
    dict(posterior="up_iaf2", prior="made", depth_ar=0, weightsharing="all", depths=[2, 1]),
    dict(posterior="up_iaf1_nl", prior="diag", px="bernoulli", nl="softplus", pad_x=2),
    dict(posterior="up_iaf2_nl", prior="diag2", weightsharing="acrosslevels", depths=[1, 2]),
    dict(posterior="down_diag", prior="made", downsample_type="conv", kl_min=2.0),
    dict(posterior="down_iaf1", prior="diag", nl="tanh", kl_min=0.0, kernel_x=(3, 3)),
    dict(posterior="down_iaf2", prior="diag2", nl="leakyrelu"),
    dict(posterior="down_iaf1_nl", prior="made", depth_ar=2),
    dict(posterior="down_iaf2_nl", prior="diag", depth_ar=0, weightsharing="withinlevel",
         depths=[2, 1]),
    dict(posterior="down_iaf2_nl2", prior="diag2", depth_ar=2, kl_min=0.0, kernel_h=(5, 5)),
    dict(posterior="down_iaf1_deep", prior="made", nl="shiftedrelu", downsample_type="conv"),
    dict(posterior="down_iaf2_deep", prior="diag", depth_ar=2, nl="none", n_z=8),
    dict(posterior="down_tim", prior="diag", kl_min=1.0),
]


def random_weights(model, rng):
    """Non-trivial values for every parameter. Masked weights get values under their
    masks too: the model must mask them on use. Scales `s` stay near 0 (a filter's norm is
    exp(3 s)) so that activations and KLs keep moderate sizes."""
    values = {}
    for name, value in model.state.weights().items():
        shape = np.shape(value)
        if name == "logsd_x":
            v = -1.0 + 0.1 * rng.randn()
        elif name.endswith("_s"):
            v = 0.1 * rng.randn(*shape) - 0.2
        else:  # _w, _b, h_top
            v = 0.3 * rng.randn(*shape)
        values[name] = np.asarray(v, floatX)
    return values


@pytest.mark.parametrize("settings", CONFIGS,
                         ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_theano_graph_matches_the_numpy_reference(settings):
    seed = CONFIGS.index(settings)
    config = ModelConfig(**{**TINY, **settings})
    model = Trainer(ResNetVAE(config, seed=seed))
    rng = np.random.RandomState(100 + seed)
    weights = random_weights(model, rng)
    model.state.set_weights(weights)  # the weights and their averages, which evaluation uses
    x = np.random.RandomState(0).randint(0, 256, (4, 3, 8, 8)).astype(np.uint8)
    eps = [rng.randn(len(x), *shape).astype(floatX) for shape in model.model.latent_shapes()]

    got = model.evaluate(x, eps)
    want = forward(config, weights, x, eps)

    assert set(got) == set(want)
    cost_x = np.abs(want["cost_x"])
    for key in ("cost", "elbo", "cost_x", "log_weight"):
        np.testing.assert_allclose(got[key], want[key], rtol=2e-5, atol=0, err_msg=key)
    for key in sorted(k for k in want if k.startswith("cost_z")):
        # A layer's KL is a difference of log-densities and may be small: judged by its
        # own size and by cost_x's (float32 rounding of the whole pass).
        tolerance = 2e-5 * np.abs(want[key]) + 2e-6 * cost_x
        error = np.abs(np.asarray(got[key], np.float64) - want[key])
        assert np.all(error <= tolerance), (key, got[key], want[key])
