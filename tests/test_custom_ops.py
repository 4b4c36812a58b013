"""Our C ops against the plain Theano they replace: the batched-GEMM convolution against
Theano's conv2d, the weight-norm op against its elementwise expression."""
import numpy as np
import pytest

from layers.backend import T, floatX, theano
from layers.gemm_conv import gemm_conv2d
from layers.weight_norm import weight_norm


def _conv_and_grads(conv):
    """f(x, w, gy) -> (y, dL/dw, dL/dx) for L = sum(gy * conv(x, w))."""
    x, w, gy = T.tensor4("x"), T.tensor4("w"), T.tensor4("gy")
    y = conv(x, w)
    grad_w, grad_x = T.grad(None, [w, x], known_grads={y: gy})
    return theano.function([x, w, gy], [y, grad_w, grad_x])


@pytest.fixture(scope="module")
def ours():
    return _conv_and_grads(gemm_conv2d)


@pytest.fixture(scope="module")
def theanos():
    return _conv_and_grads(lambda x, w: T.nnet.conv2d(x, w, border_mode="half"))


# (images, channels, height, width, filters, kernel): one group of images, several groups
# (24x24 > 512 pixels, so one image per group), non-square images and kernels, 1x1.
SHAPES = [(3, 5, 7, 6, 4, (3, 3)), (5, 2, 24, 24, 3, (3, 3)), (4, 3, 9, 5, 2, (5, 5)),
          (2, 4, 6, 8, 3, (1, 5)), (3, 6, 5, 5, 7, (1, 1)), (17, 3, 8, 8, 5, (3, 3))]


def _random_inputs(shape, seed=0):
    n, c, height, width, f, (kh, kw) = shape
    rng = np.random.RandomState(seed)
    return (rng.randn(n, c, height, width).astype(floatX), rng.randn(f, c, kh, kw).astype(floatX),
            rng.randn(n, f, height, width).astype(floatX))


@pytest.mark.parametrize("shape", SHAPES)
def test_output_and_gradients_match_theano_conv2d(ours, theanos, shape):
    inputs = _random_inputs(shape)
    for got, want, name in zip(ours(*inputs), theanos(*inputs), ["y", "grad w", "grad x"]):
        assert got.shape == want.shape, name
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=name)


def test_results_are_identical_on_every_call(ours):
    # Several groups of images are shared between threads as they come free; the sums
    # must not depend on which thread took which group.
    inputs = _random_inputs((9, 3, 24, 24, 4, (3, 3)), seed=1)
    first = ours(*inputs)
    for _ in range(3):
        for a, b in zip(first, ours(*inputs)):
            assert np.array_equal(a, b)


def test_an_empty_minibatch_gives_empty_outputs_and_a_zero_weight_gradient(ours):
    x, w, gy = _random_inputs((0, 3, 5, 5, 4, (3, 3)))
    y, grad_w, grad_x = ours(x, w, gy)
    assert y.shape == (0, 4, 5, 5) and grad_x.shape == x.shape
    assert grad_w.shape == w.shape and not grad_w.any()


def test_mismatched_channels_give_a_clear_error(ours):
    x, w, gy = _random_inputs((2, 3, 5, 5, 4, (3, 3)))
    with pytest.raises(ValueError, match="GemmConv: input and filter channels differ"):
        ours(x, w[:, :2], gy)


def test_even_kernels_are_refused(ours):
    x, w, gy = _random_inputs((2, 3, 5, 5, 4, (3, 3)))
    with pytest.raises(ValueError, match="kernel sizes must be odd"):
        ours(x, w[:, :, :2, :2], gy)


TAPS = (0, 2, 4, 7)  # of a 3x3 kernel: (0, 0), (0, 2), (1, 1), (2, 1)


@pytest.fixture(scope="module")
def ours_with_taps():
    return _conv_and_grads(lambda x, w: gemm_conv2d(x, w, TAPS))


@pytest.fixture(scope="module")
def theanos_zeroing_other_taps():
    tap_mask = np.zeros((1, 1, 9), dtype=floatX)
    tap_mask[..., list(TAPS)] = 1
    tap_mask = tap_mask.reshape(1, 1, 3, 3)
    return _conv_and_grads(lambda x, w: T.nnet.conv2d(x, w * tap_mask, border_mode="half"))


@pytest.mark.parametrize("shape", [(3, 5, 7, 6, 4, (3, 3)), (5, 2, 24, 24, 3, (3, 3))])
def test_listed_taps_equal_a_kernel_zeroed_elsewhere(ours_with_taps, theanos_zeroing_other_taps,
                                                     shape):
    inputs = _random_inputs(shape)
    got_all = ours_with_taps(*inputs)
    want_all = theanos_zeroing_other_taps(*inputs)
    for got, want, name in zip(got_all, want_all, ["y", "grad w", "grad x"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max(),
                                   err_msg=name)
    unused = [t for t in range(9) if t not in TAPS]
    assert not got_all[1].reshape(got_all[1].shape[:2] + (9,))[..., unused].any()


def _weight_norm_and_grads(norm, eps):
    """f(v, s, g) -> (kernel, dL/dv, dL/ds) for L = sum(g * kernel)."""
    v, s, g = T.tensor4("v"), T.vector("s"), T.tensor4("g")
    kernel = norm(v, s, eps)
    return theano.function([v, s, g], [kernel] + T.grad(None, [v, s], known_grads={kernel: g}))


def _plain_weight_norm(v, s, eps):
    norm = T.sqrt(T.sqr(v).sum(axis=(1, 2, 3), keepdims=True))
    return v / (norm + eps) * T.exp(3 * s).dimshuffle(0, "x", "x", "x")


@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_weight_norm_op_matches_the_plain_expression(eps):
    ours_wn = _weight_norm_and_grads(weight_norm, eps)
    plain = _weight_norm_and_grads(_plain_weight_norm, eps)
    rng = np.random.RandomState(2)
    inputs = (rng.randn(5, 4, 3, 3).astype(floatX), 0.3 * rng.randn(5).astype(floatX),
              rng.randn(5, 4, 3, 3).astype(floatX))
    for got, want, name in zip(ours_wn(*inputs), plain(*inputs), ["kernel", "grad v", "grad s"]):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(),
                                   err_msg=name)
    # Each filter comes out with norm exp(3 s).
    kernel = ours_wn(*inputs)[0]
    np.testing.assert_allclose(np.sqrt((kernel ** 2).sum(axis=(1, 2, 3))), np.exp(3 * inputs[1]),
                               rtol=1e-5)


def test_weight_norm_of_a_fully_masked_filter_has_finite_gradients():
    # A masked convolution can zero a whole filter; the norm's epsilon keeps it at 0.
    ours_wn = _weight_norm_and_grads(weight_norm, 1e-8)
    rng = np.random.RandomState(3)
    v = rng.randn(3, 2, 3, 3).astype(floatX)
    v[1] = 0
    kernel, grad_v, grad_s = ours_wn(v, np.zeros(3, floatX), rng.randn(3, 2, 3, 3).astype(floatX))
    assert not kernel[1].any()
    assert np.isfinite(grad_v).all() and np.isfinite(grad_s).all() and grad_s[1] == 0


def _optimiser_after_one_update(custom_op, gradient, monkeypatch):
    """(weights, averages, m, u, applied) after one update of a small AdaMaxPolyak whose
    state starts at random values, with the C op or with the plain Theano update."""
    from layers.parameters import FlatParameters
    from models.optim import AdaMaxPolyak

    rng = np.random.RandomState(7)
    initial = {"dense_w": rng.randn(6, 5).astype(floatX), "masked_w": rng.randn(4, 3).astype(floatX),
               "bias": rng.randn(3).astype(floatX)}
    mask = (rng.rand(4, 3) > 0.5).astype(floatX)
    initial["masked_w"] *= mask
    params = FlatParameters.from_values(initial, "w")
    averages = params.like("avg")
    averages.set_buffer(rng.randn(averages.size))
    monkeypatch.setattr(AdaMaxPolyak, "custom_op", custom_op)
    optimiser = AdaMaxPolyak(params, averages, {"masked_w": mask}, alpha=0.01, beta1=0.1,
                             beta2=0.01)
    optimiser.set_state({"adamax_m": 0.1 * rng.randn(params.size),
                         "adamax_u": rng.rand(params.size) + 1e-3})
    update = optimiser.update_function()
    assert ("AdaMaxPolyakStep" in str(update.maker.fgraph.toposort())) == custom_op
    applied = update(gradient)
    state = optimiser.state()
    return (params.buffer.copy(), averages.buffer.copy(), state["adamax_m"], state["adamax_u"],
            bool(applied), mask)


def test_optimiser_op_matches_the_plain_theano_update(monkeypatch):
    gradient = np.random.RandomState(8).randn(30 + 12 + 3 + 3).astype(floatX)
    *ours, applied, mask = _optimiser_after_one_update(True, gradient, monkeypatch)
    *plain, plain_applied, _ = _optimiser_after_one_update(False, gradient, monkeypatch)
    assert applied and plain_applied
    for got, want, name in zip(ours, plain, ["w", "avg", "m", "u"]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=name)
    masked = ours[0][30:42].reshape(4, 3)
    assert np.all(masked[mask == 0] == 0) and np.all(masked[mask != 0] != 0)


@pytest.mark.parametrize("where", [0, 45, -1])  # a weight's gradient, the cost, a free slot
def test_optimiser_op_changes_nothing_when_any_element_is_not_finite(monkeypatch, where):
    rng = np.random.RandomState(9)
    gradient = rng.randn(48).astype(floatX)
    *before, _, _ = _optimiser_after_one_update(True, np.full(48, np.nan, floatX), monkeypatch)
    gradient[where] = np.inf
    *after, applied, _ = _optimiser_after_one_update(True, gradient, monkeypatch)
    assert not applied
    for got, want in zip(after, before):
        np.testing.assert_array_equal(got, want)
