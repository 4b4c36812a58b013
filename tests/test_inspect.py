"""Looking inside a model: sampling at a temperature, reconstructions with the top layers
from the posterior, and what each latent layer carries (KL, active units)."""
import numpy as np
import pytest

from layers.runtime.backend import T, floatX, theano
from models.config import ModelConfig
from models.resnet_vae import ResNetVAE
from models.run.inspection import latent_layers
from models.run.processes import Processes
from models.trainer import Trainer

TINY = dict(shape_x=(3, 8, 8), depths=[1, 1], n_h1=8, n_h2=8, n_z=4, posterior="down_diag")


def images(n=6):
    return np.random.RandomState(0).randint(0, 256, (n, 3, 8, 8)).astype(np.uint8)


def trainer(config=TINY, seed=2):
    return Trainer(ResNetVAE(ModelConfig(**config), seed=seed))


@pytest.fixture(scope="module")
def model():
    m = trainer()
    m.data_init(images(), m.noise("init", 0, range(6)))
    return m


def test_temperature_zero_gives_the_same_images_for_every_noise(model):
    zero = [0 * e for e in model.noise("sample", 0, range(5))]
    first = model.decode(zero)
    np.testing.assert_array_equal(model.decode(zero), first)
    other_seed = trainer(seed=7)
    other_seed.state.set_weights(model.state.weights())
    np.testing.assert_array_equal(other_seed.decode([0 * e for e in other_seed.noise(
        "sample", 3, range(5))]), first)
    assert not np.array_equal(model.decode(model.noise("sample", 0, range(5))), first)


@pytest.mark.parametrize("prior", ["diag", "made"])
def test_temperature_scales_the_spread_of_z_about_the_prior_mean(prior):
    m = trainer({**TINY, "prior": prior, "posterior": "down_iaf2"}, seed=3)
    layer = m.model.vae_layers[1, 0]
    h, eps = T.tensor4("h"), T.tensor4("eps")
    z = theano.function([h, eps], layer.prior.sample(layer.down_parts.split(h), eps,
                                                     m.state.avg_params))
    rng = np.random.RandomState(1)
    h0 = rng.randn(4, layer.down_parts.n_channels, 4, 4).astype(floatX)
    e0 = rng.randn(4, 4, 4, 4).astype(floatX)
    mean = z(h0, 0 * e0)
    spread = {t: np.abs(z(h0, t * e0) - mean) for t in (0.5, 1.0)}
    if prior == "diag":  # z = mean + t * eps * sd: exactly proportional
        np.testing.assert_allclose(spread[0.5], 0.5 * spread[1.0], rtol=1e-4, atol=1e-6)
    else:  # made: the mean and sd depend on earlier z, so only on average
        assert 0.35 < spread[0.5].mean() / spread[1.0].mean() < 0.65
    assert spread[1.0].mean() > 0.1


def test_reconstruction_from_every_posterior_layer_is_the_evaluation_graphs_mean(model):
    x = images(4)
    eps = model.noise("eval", 0, range(4))
    xs, es = model._inputs()
    means = model.model.inference(xs, es, model.state.avg_params)[1]
    mean = theano.function([xs] + es, means)(x, *eps)
    prior_eps = model.noise("sample", 0, range(4))
    both = model.reconstruct(x, eps, prior_eps, [1, 1])
    np.testing.assert_array_equal(both, (256 * mean).astype(np.uint8))
    only_top = model.reconstruct(x, eps, prior_eps, [0, 1])
    assert not np.array_equal(only_top, both)
    np.testing.assert_array_equal(model.reconstruct(x, eps, prior_eps, [0, 0]),
                                  model.decode(prior_eps))


def test_a_layer_forced_onto_its_prior_has_no_kl_and_no_active_units(model):
    """Zero the bottom-up and top-down posterior and prior outputs of layer 1_0: then
    q = p = N(0, 1) there, whatever the image."""
    weights = model.state.weights()
    model = trainer()  # a copy, to change
    layer = model.model.vae_layers[1, 0]
    for conv, parts in ((layer.up_conv1, layer.up_parts), (layer.down_conv1, layer.down_parts)):
        for name in parts.sizes:
            if name in ("qz_mean", "qz_logsd", "pz_mean", "pz_logsd", "rz_mean", "rz_logsd"):
                weights[conv.s_name][parts.slice(name)] = -40  # exp(3 s) is 0 in float32
                weights[conv.b_name][parts.slice(name)] = 0
    # Layer 0_0's posterior mean, std 0.1 after data-dependent init, made 10 times wider.
    bottom = model.model.vae_layers[0, 0]
    weights[bottom.up_conv1.s_name][bottom.up_parts.slice("qz_mean")] += np.log(10) / 3
    model.state.set_weights(weights)
    x = images(6)
    elbo = float(model.evaluate(x, model.noise("eval", 0, range(6)))["elbo"].mean())
    report = latent_layers(model, x, 3, elbo, Processes())
    assert report["001_000"]["kl_nats"] == 0 and report["001_000"]["active_units"] == 0
    assert report["001_000"]["floored_maps"] == 4  # every map below kl_min = 0.25
    assert report["000_000"]["kl_nats"] > 1 and report["000_000"]["active_units"] > 0
    assert report["000_000"]["units"] == 4 * 4 * 4 and report["001_000"]["units"] == 4 * 2 * 2
