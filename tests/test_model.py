"""The ResNet VAE: reference parameter lists, init statistics, gradients, optimiser,
save/load, every posterior and prior, and learning on a fixed batch."""
import ast
import math
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from data.toy import toy_images
from layers import ops
from layers.conv import Conv2d
from layers.masked import MaskedConv2d
from layers.runtime.backend import T, floatX, theano
from models.config import POSTERIORS, ConfigError, ModelConfig
from models.optim import GradientVector
from models.resnet_vae import ResNetVAE
from models.run.processes import Processes
from models.run.step import NonFiniteStep, TrainingStep
from models.run.weights import WeightsError, load_ndict, save_ndict
from models.trainer import Trainer

# The original's parameter lists (name shape per line, the config on the first line).
REFERENCE = Path(__file__).resolve().parent / "data"
TINY = dict(shape_x=(3, 8, 8), depths=[1, 1], n_h1=8, n_h2=8, n_z=4, depth_ar=1,
            posterior="down_iaf2_nl")


def tiny_model(**changes):
    return Trainer(ResNetVAE(ModelConfig(**{**TINY, **changes}), seed=3))


def train_step(trainer, x):
    """The training loop's step, in this one process, at zero noise (a step that is not
    finite raises `NonFiniteStep`)."""
    return TrainingStep(trainer, Processes())(x, zero_noise(trainer, len(x)))


def batch(n=8):
    return np.ascontiguousarray(toy_images(n, seed=5)[:, :, 8:16, 8:16])


def zero_noise(model, n=8):
    """Posterior noise that makes every sample its mean: a deterministic model."""
    return [np.zeros((n,) + shape, floatX) for shape in model.model.latent_shapes()]


def symbolic_noise(model):
    return [T.tensor4(f"eps{k}") for k in range(len(model.model.vae_layers))]


def reference_config(header):
    """Model arguments from a reference file's first line, as train.py would derive them."""
    top, margs = {"n_h": 160, "n_z": 32, "depths": [2, 2]}, {}
    for token in header.split("config:")[1].split():
        key, value = token.split("=")
        if key == "problem":
            continue
        try:
            value = ast.literal_eval(value)
        except ValueError:
            pass
        (margs if key.startswith("margs.") else top)[key.replace("margs.", "")] = value
    return dict(n_h1=top["n_h"], n_h2=top["n_h"], n_z=top["n_z"], depths=top["depths"], **margs)


REFERENCE_LISTS = sorted(REFERENCE.glob("params_*.txt"))


def test_every_reference_list_is_in_the_repository():
    # An empty list would make the test below collect nothing and pass silently.
    assert [p.stem for p in REFERENCE_LISTS] == [
        "params_down_diag", "params_down_iaf1", "params_readme_example", "params_table3",
        "params_up_iaf2_nl"]


@pytest.mark.parametrize("path", REFERENCE_LISTS, ids=lambda p: p.stem)
def test_parameter_names_and_shapes_match_the_reference(path):
    header, *lines = path.read_text().splitlines()
    expected = dict(line.split(" ", 1) for line in lines if line.strip())
    model = ResNetVAE(ModelConfig(**reference_config(header)), draw_weights=False)
    got = {name: str(np.shape(value)) for name, value in model.initial.items()}
    assert got == expected


def test_posterior_names_are_case_insensitive_and_errors_list_the_choices():
    assert ModelConfig(**{**TINY, "posterior": "down_iaf2_NL"}).posterior == "down_iaf2_nl"
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{**TINY, "posterior": "down_iaf3"})
    assert all(p in str(err.value) for p in POSTERIORS)
    for bad in ({"depths": []}, {"depths": [1, 1, 1, 1]}, {"depth_ar": -1},
                {"prior": "laplace"}, {"nl": "swish"}, {"n_z": 3},
                {"posterior": "down_tim", "prior": "made"}, {"kernel_h": (2, 2)}):
        with pytest.raises(ConfigError):
            ModelConfig(**{**TINY, **bad})


def test_weightsharing_all_shares_weights_but_not_scales():
    model = tiny_model(depths=[2], weightsharing="all")
    names = set(model.state.params)
    assert "[s]_up_conv2_w" in names and "0_0_up_conv2_w" not in names
    assert {"0_0_up_conv2_s", "0_1_up_conv2_s", "0_0_up_conv2_b"} <= names


# -- one compiled tiny model, shared by the tests below -------------------------------
@pytest.fixture(scope="module")
def model():
    # kl_min=0: the free-bits floor is a kink that finite differences may straddle.
    m = tiny_model(kl_min=0.0)
    assert m.data_init(batch(), zero_noise(m)) == []
    m.snapshot = m.state.arrays()
    return m


@pytest.fixture
def fresh(model):
    """The module's model, reset to its state right after data-dependent init."""
    model.state.set_arrays(model.snapshot)
    return model


def cost_and_gradients(model):
    """A compiled f(x, *eps) -> [summed cost, gradient of every parameter...]."""
    x, eps = T.tensor4("x", dtype="uint8"), symbolic_noise(model)
    cost = model.model.costs(x, eps, model.state.params)["cost"].sum()
    return theano.function([x] + eps, [cost] + model.state.optimiser.gradients(cost))


def flat_gradient(model, f, *inputs):
    """The summed cost and a flat copy of the gradient, from `cost_and_gradients`."""
    cost, *grads = f(*inputs)
    vector = GradientVector(model.state.params)
    for part, gradient in zip(vector.parts, grads):
        part[...] = gradient
    return cost, vector.gradient


@pytest.fixture(scope="module")
def grad_fn(model):
    """f(x) -> (summed cost, {name: gradient}) at zero noise."""
    f = cost_and_gradients(model)

    def cost_and_named_gradients(x):
        cost, flat = flat_gradient(model, f, x, *zero_noise(model, len(x)))
        return cost, model.state.params.split(flat)
    return cost_and_named_gradients


def _ops(function):
    return {type(node.op).__name__ for node in function.maker.fgraph.apply_nodes}


def test_custom_ops_match_plain_theano_in_cost_and_all_gradients(fresh, monkeypatch):
    fast = cost_and_gradients(fresh)
    monkeypatch.setattr(ops, "CUSTOM_OPS", False)  # the plain version, same weights
    plain = cost_and_gradients(fresh)
    for op in ("OnednnConv", "WeightNorm"):
        assert op in _ops(fast) and op not in _ops(plain)
    noise = [np.random.RandomState(k).randn(*e.shape).astype(floatX)
             for k, e in enumerate(zero_noise(fresh))]
    (got_cost, got_flat), (want_cost, want_flat) = (flat_gradient(fresh, f, batch(), *noise)
                                                    for f in (fast, plain))
    assert got_cost == pytest.approx(want_cost, rel=1e-5)
    for name, got, want in zip(fresh.state.params, fresh.state.params.split(got_flat).values(),
                               fresh.state.params.split(want_flat).values()):
        # Float32 sums in another order differ by ~1e-6 of the gradient's norm; a wrong
        # tap, mask or scale moves it by far more. Tiny elements are judged by the norm.
        # The last convolutions' gradients come through the discretised logistic, whose
        # sigmoid(u + 1/256) - sigmoid(u) loses four of float32's seven digits: there the
        # two versions' rounding shows up to ~3e-5 of the norm.
        error = np.linalg.norm(np.asarray(got, np.float64) - want)
        assert error <= 1e-4 * np.linalg.norm(want), (name, error, np.linalg.norm(want))
    assert np.linalg.norm(want_flat) > 0


def test_the_gradient_function_writes_the_weights_gradients_into_the_flat_vector(
        fresh, grad_fn, monkeypatch):
    fresh.gradient(batch(), zero_noise(fresh))  # compiled
    compiled, returned = fresh._compiled["gradient"][0], []

    class Recording:  # the compiled function, keeping what it returns
        output_storage = compiled.output_storage

        def __call__(self, *inputs):
            returned.extend(compiled(*inputs))
            return returned
    monkeypatch.setitem(fresh._compiled, "gradient", (Recording(), None))
    cost, vector = fresh.gradient(batch(), zero_noise(fresh))
    got = fresh.state.params.split(vector.gradient.copy())
    # The ops wrote the gradients into the vector's parts, not into arrays of their own.
    in_place = {name: gradient is part
                for name, gradient, part in zip(fresh.state.params, returned[2:], vector.parts)}
    assert all(in_place[name] for name in in_place if name.endswith(("_w", "_s"))), in_place
    assert vector["cost"] == pytest.approx(cost.sum(), rel=1e-6)
    _, want = grad_fn(batch())  # the same gradients, returned as arrays of their own
    for name in fresh.state.params:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_data_init_gives_the_stated_statistics(fresh, monkeypatch):
    outputs = []

    def recording(self, h, params, _output=Conv2d.output):  # masked convs inherit it
        h = _output(self, h, params)
        outputs.append((self, h))
        return h
    monkeypatch.setattr(Conv2d, "output", recording)
    x, eps = T.tensor4("x", dtype="uint8"), symbolic_noise(fresh)
    fresh.model.costs(x, eps, fresh.state.params)
    values = theano.function([x] + eps, [h for _, h in outputs])(batch(), *zero_noise(fresh))
    assert len(values) == 4 * 2 + 2 + 2 * 3  # four convs per layer, x_enc/x_dec, IAF convs
    for (conv, _), h in zip(outputs, values):
        target = 1.0 if isinstance(conv, MaskedConv2d) else 0.1
        np.testing.assert_allclose(h.mean(axis=(0, 2, 3)), 0, atol=2e-3 * target, err_msg=conv.name)
        np.testing.assert_allclose(h.std(axis=(0, 2, 3)), target, rtol=2e-3, err_msg=conv.name)


def test_gradients_match_finite_differences(fresh, grad_fn):
    x = batch()
    rng = np.random.RandomState(0)
    start = fresh.state.weights(False)
    _, grads = grad_fn(x)
    for trial in range(3):
        # Perturb each parameter in proportion to its own scale; float32 needs a step
        # big enough to rise above rounding and small enough to stay linear.
        direction = {n: np.asarray(rng.randn(*w.shape) * (np.abs(w).mean() + 1e-2), floatX)
                     for n, w in start.items()}
        analytic = sum(float((g * direction[n]).sum()) for n, g in grads.items())
        step = 0.02
        costs = []
        for sign in (1, -1):
            moved = {n: w + sign * step * direction[n] for n, w in start.items()}
            fresh.state.params.set_values(moved)
            costs.append(float(grad_fn(x)[0]))
        numeric = (costs[0] - costs[1]) / (2 * step)
        assert numeric == pytest.approx(analytic, rel=0.02), trial
    fresh.state.params.set_values(start)


def test_adamax_step_polyak_average_and_remasking(fresh, grad_fn):
    x = batch()
    w0 = fresh.state.weights(False)
    _, grads = grad_fn(x)
    assert train_step(fresh, x).applied
    w1, avg1 = fresh.state.weights(False), fresh.state.weights(True)
    masks = {c.w_name: c.mask for c in fresh.model.masked_convs}
    for n, g in grads.items():
        # First step: m = 0.1 g, u = max(0.999e-8, |g| + 1e-8) (docs/model.md §10).
        expected = w0[n] - 0.002 * (0.1 * g) / np.maximum(0.999e-8, np.abs(g) + 1e-8)
        expected = expected * masks.get(n, 1)
        np.testing.assert_allclose(w1[n], expected, rtol=1e-4, atol=1e-7, err_msg=n)
        np.testing.assert_allclose(avg1[n], w0[n], rtol=1e-6, atol=1e-8, err_msg=n)
    train_step(fresh, x)
    avg2, w2 = fresh.state.weights(True), fresh.state.weights(False)
    for n in grads:
        np.testing.assert_allclose(avg2[n], 0.001 * w1[n] + 0.999 * avg1[n], rtol=1e-5,
                                   atol=1e-8, err_msg=n)
    for n, mask in masks.items():
        assert np.all(w2[n][mask == 0] == 0), n


def test_a_step_sums_the_cost_and_carries_the_votes(fresh):
    x = batch()
    cost, _ = fresh.gradient(x, zero_noise(fresh))
    step = TrainingStep(fresh, Processes())(x, zero_noise(fresh), stop=True)
    assert step.applied and step.stop and not step.checkpoint
    assert step.cost == pytest.approx(cost.sum(), rel=1e-6)


def test_a_process_without_images_in_a_step_adds_nothing_but_its_votes(fresh):
    x, noise = batch()[:0], zero_noise(fresh, 0)
    step = TrainingStep(fresh, Processes())(x, noise, checkpoint=True)
    assert step.cost == 0 and step.applied and step.checkpoint and not step.stop


def test_non_finite_cost_leaves_every_variable_unchanged(fresh):
    fresh.state.params.set_values({"logsd_x": np.nan})
    before = fresh.state.arrays()
    with pytest.raises(NonFiniteStep):
        TrainingStep(fresh, Processes())(batch(), zero_noise(fresh))
    step = TrainingStep(fresh, Processes(), skip_nonfinite=True)(batch(), zero_noise(fresh))
    assert np.isnan(step.cost) and not step.applied
    assert np.isnan(fresh.state.weights(False)["logsd_x"])
    for name, value in fresh.state.arrays().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_training_cost_falls_on_a_fixed_batch(fresh):
    x = batch()
    costs = [train_step(fresh, x).cost / len(x) for _ in range(40)]
    assert np.all(np.isfinite(costs))
    # The learning rate is small (0.002) and logsd_x starts at 0: a slow, steady fall.
    assert np.mean(costs[-5:]) < costs[0] - 0.05, costs
    assert np.all(np.diff(costs[-10:]) < 0), costs


def test_evaluation_outputs_are_consistent(fresh):
    results = fresh.evaluate(batch(), zero_noise(fresh))
    kl = sum(v for k, v in results.items() if k.startswith("cost_z"))
    bits = 1 / (np.prod(TINY["shape_x"]) * math.log(2))
    assert set(results) >= {"cost", "cost_x", "cost_z000_000", "cost_z001_000", "elbo"}
    np.testing.assert_allclose(results["elbo"], (results["cost_x"] + kl) * bits, rtol=1e-5)
    np.testing.assert_allclose(results["log_weight"], -(results["cost_x"] + kl), rtol=1e-5)
    np.testing.assert_allclose(results["cost"], results["elbo"], rtol=1e-5)  # kl_min = 0


def test_save_load_round_trip_reproduces_evaluation(fresh, tmp_path):
    x = batch()
    train_step(fresh, x)
    before = fresh.evaluate(x, zero_noise(fresh))
    path = tmp_path / "weights.ndict.tar.gz"
    save_ndict(fresh.state.weights(), path)
    loaded = load_ndict(path)
    assert sorted(loaded) == list(loaded) == sorted(fresh.state.params)
    fresh.state.avg_params.set_buffer(np.zeros(fresh.state.avg_params.size))
    fresh.state.set_weights(loaded)
    after = fresh.evaluate(x, zero_noise(fresh))
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_equal_weights_make_equal_files(tmp_path):
    weights = {"a_w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)}
    save_ndict(weights, tmp_path / "one.ndict.tar.gz")
    time.sleep(1.1)  # a gzip header holds seconds
    save_ndict(dict(reversed(weights.items())), tmp_path / "two.ndict.tar.gz")
    assert (tmp_path / "one.ndict.tar.gz").read_bytes() == \
        (tmp_path / "two.ndict.tar.gz").read_bytes()


def test_damaged_weights_files_are_named_with_the_problem(tmp_path):
    path = tmp_path / "weights.ndict.tar.gz"
    save_ndict({"a_w": np.ones((2, 3), np.float32)}, path)
    truncated = tmp_path / "truncated.ndict.tar.gz"
    truncated.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(WeightsError, match="truncated.ndict.tar.gz: truncated or corrupt"):
        load_ndict(truncated)
    damaged = tmp_path / "damaged.ndict.tar.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="damaged.ndict.tar.gz: truncated or corrupt"):
        load_ndict(damaged)
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        tar.add(path, arcname="arrays.npz")
    with pytest.raises(WeightsError, match=r"not a weights file .*holds \['arrays.npz'\]"):
        load_ndict(other)


def test_loading_incomplete_or_misshapen_weights_says_which(fresh):
    weights = fresh.state.weights()
    missing = dict(weights)
    del missing["0_0_up_conv2_w"]
    with pytest.raises(ConfigError, match="0_0_up_conv2_w"):
        fresh.state.set_weights(missing)
    assert fresh.state.set_weights(missing, complete=False) == ["0_0_up_conv2_w"]
    wrong = {**weights, "x_enc_b": np.zeros(5, floatX)}
    with pytest.raises(ConfigError, match=r"x_enc_b \(5,\)"):
        fresh.state.set_weights(wrong)


@pytest.mark.parametrize("other,expected", [
    ({"n_h1": 16, "n_h2": 16}, "n_h 16 (this model: 8)"),
    ({"depths": [1]}, "depths [1] (this model: [1, 1])"),
    ({"n_z": 8}, "n_z 8 (this model: 4)"),
    ({"posterior": "down_iaf2"}, "posterior flow one masked conv (this model: a network (_nl))"),
])
def test_weights_of_another_config_are_refused_in_one_sentence_naming_the_option(
        fresh, other, expected):
    weights = tiny_model(**other).state.weights()
    with pytest.raises(ConfigError) as err:
        fresh.state.set_weights(weights, source="w.ndict.tar.gz")
    message = str(err.value)
    assert expected in message and message.startswith("w.ndict.tar.gz belong to another model")
    assert len(message) < 250 and "\n" not in message


def test_decode_gives_uint8_images_of_the_data_shape(fresh):
    images = fresh.decode(fresh.noise("sample", 0, range(5)))
    assert images.shape == (5, 3, 8, 8) and images.dtype == np.uint8
    again = fresh.decode(fresh.noise("sample", 0, range(5)))
    np.testing.assert_array_equal(images, again)
    assert images.std() > 0


def test_free_bits_floor_every_feature_map():
    """With kl_min above every map's KL, the objective's KL is exactly kl_min per map."""
    kl_min = 1000.0
    model = tiny_model(kl_min=kl_min, posterior="down_diag")
    results = model.evaluate(batch(), zero_noise(model))
    n_maps = TINY["n_z"] * len(TINY["depths"])
    expected = (results["cost_x"] + kl_min * n_maps) / (np.prod(TINY["shape_x"]) * math.log(2))
    np.testing.assert_allclose(results["cost"], expected, rtol=1e-5)


def test_made_prior_sample_is_the_exact_autoregressive_fixed_point():
    model = tiny_model(prior="made", depth_ar=2)
    layer = model.model.vae_layers[0, 0]
    rng = np.random.RandomState(4)
    model.state.params.set_buffer(rng.randn(model.state.params.size) * 0.5)
    h, eps, z = T.tensor4("h"), T.tensor4("eps"), T.tensor4("z")
    parts = layer.down_parts.split(h)
    sample = theano.function([h, eps], layer.prior.sample(parts, eps, model.state.params))
    made = theano.function([z, h], layer.prior._mean_logsd(z, parts, model.state.params))
    h0 = rng.randn(2, layer.down_parts.n_channels, 4, 4).astype(floatX)
    eps0 = rng.randn(2, TINY["n_z"], 4, 4).astype(floatX)
    z0 = sample(h0, eps0)
    mean, logsd = made(z0, h0)
    np.testing.assert_allclose(z0, mean + eps0 * np.exp(logsd), rtol=1e-5, atol=1e-6)
    assert np.abs(mean).max() > 1e-3  # the prior really depends on z: not a trivial case
