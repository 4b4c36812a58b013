"""Properties of the building blocks: masks, autoregressive Jacobians, densities."""
import itertools
import math

import numpy as np
import pytest

from layers.conv import Conv2d, depth_to_space
from layers.distributions import discretized_logistic_logps, gaussian_diag_logps
from layers.iaf import IAFNetwork
from layers.masked import MaskedConv2d, ar_mask
from layers.nonlinearities import nonlinearity
from layers.runtime.backend import T, floatX, theano


def symbolic(params):
    """A layer's ``name -> initial array`` dict as the symbolic parameters it applies with."""
    return {name: theano.shared(value) for name, value in params.items()}


def _jacobian(f_out, x_shape, rng):
    """Exact (symbolic) Jacobian d out / d x, flattened, at a random point."""
    x = T.tensor4("x")
    jac = theano.function([x], theano.gradient.jacobian(f_out(x).flatten(), x))
    x0 = rng.randn(*x_shape).astype(floatX)
    return jac(x0).reshape(-1, int(np.prod(x_shape)))


def _dependency_allowed(out_c, in_c, n_out, n_in, zerodiagonal):
    """Which input channel an output channel may see at the *same* pixel (docs/model.md §3)."""
    if n_out >= n_in:
        group = out_c // (n_out // n_in)
        return in_c < group or (in_c == group and not zerodiagonal)
    k = n_in // n_out
    return in_c < out_c * k or (in_c < (out_c + 1) * k and not zerodiagonal)


@pytest.mark.parametrize("n_in,n_out,zerodiagonal", [(2, 4, True), (2, 4, False),
                                                      (4, 2, True), (3, 3, False)])
def test_masked_conv_is_autoregressive_in_raster_order(n_in, n_out, zerodiagonal):
    rng = np.random.RandomState(0)
    params = {}
    conv = MaskedConv2d(params, rng, "m", n_in, n_out, (3, 3), zerodiagonal=zerodiagonal)
    # Random unmasked weights: the mask applied in the layer alone must enforce the order.
    params["m_w"] = rng.randn(*params["m_w"].shape).astype(floatX)
    params["m_s"] = rng.randn(n_out).astype(floatX)
    height = width = 4
    jac = _jacobian(lambda x: conv(x, symbolic(params)), (1, n_in, height, width), rng)
    jac = jac.reshape(n_out, height, width, n_in, height, width)
    for oc, oy, ox, ic, iy, ix in itertools.product(range(n_out), range(height), range(width),
                                                    range(n_in), range(height), range(width)):
        earlier = (iy, ix) < (oy, ox)
        same = (iy, ix) == (oy, ox)
        allowed = earlier or (same and _dependency_allowed(oc, ic, n_out, n_in, zerodiagonal))
        value = jac[oc, oy, ox, ic, iy, ix]
        if not allowed:
            assert value == 0, (oc, oy, ox, ic, iy, ix)
    # ...and the mask does not forbid more than it must: the 3x3 neighbours above/left count.
    assert np.abs(jac[:, 2, 2][:, :, 1, 1]).sum() > 0


def test_flipmask_reverses_the_order():
    mask = ar_mask(4, 2, (3, 3), True, False)
    flipped = ar_mask(4, 2, (3, 3), True, True)
    np.testing.assert_array_equal(flipped, mask[::-1, ::-1, ::-1, ::-1])
    assert mask[:, :, 0, :].sum() == 0 and flipped[:, :, 2, :].sum() == 0


def test_iaf_transform_jacobian_is_triangular_with_the_right_diagonal():
    """z_out = (z - 0.1 m(z)) / exp(0.1 s(z)) with (m, s) from the IAF network (docs/model.md §4, §6)."""
    rng = np.random.RandomState(1)
    n_z, n_h, height, width = 2, 4, 3, 3
    params = {}
    net = IAFNetwork(params, rng, "iaf", n_z, [n_h, n_h], [n_z, n_z], (3, 3))
    for name, value in params.items():
        scale = 0.3 if name.endswith("_s") else 1
        params[name] = (rng.randn(*value.shape) * scale).astype(floatX)
    params = symbolic(params)
    context = theano.shared(rng.randn(1, n_h, height, width).astype(floatX))

    def transform(z):
        mean, logsd = net(z, context, params)
        return (z - 0.1 * mean) / T.exp(0.1 * logsd), 0.1 * logsd

    z = T.tensor4("z")
    z_out, logsd = transform(z)
    # Order the variables raster-then-channel: index = (y * W + x) * C + c.
    z_out_ordered = z_out.dimshuffle(0, 2, 3, 1).flatten()
    jac_f = theano.function([z], [theano.gradient.jacobian(z_out_ordered, z), logsd])
    z0 = rng.randn(1, n_z, height, width).astype(floatX)
    jac, logsd0 = jac_f(z0)
    jac = jac.reshape(-1, n_z, height, width).transpose(0, 2, 3, 1).reshape(len(jac), -1)
    assert np.all(np.triu(jac, k=1) == 0)
    expected_diag = np.exp(-logsd0).transpose(0, 2, 3, 1).ravel()
    np.testing.assert_allclose(np.diag(jac), expected_diag, rtol=1e-5)
    # The network really is non-trivial: there are off-diagonal dependencies.
    assert np.abs(np.tril(jac, k=-1)).max() > 1e-3


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("nl", ["none", "elu"])
def test_conv_matches_explicit_pad_channel_reference(stride, nl):
    """The border-term implementation (with the input's nonlinearity folded in, at stride
    1) equals the original's materialised pad channel."""
    rng = np.random.RandomState(2)
    params = {}
    conv = Conv2d(params, rng, "c", 2, 3, (3, 3), downsample=stride)
    params["c_s"] = rng.randn(3).astype(floatX) * 0.3
    params["c_b"] = rng.randn(3).astype(floatX)
    x = T.tensor4("x")
    x0 = rng.randn(2, 2, 6, 6).astype(floatX)
    got = theano.function([x], conv(nonlinearity(nl)(x), symbolic(params)))(x0)

    w = params["c_w"].astype(np.float64)
    kernel = w / np.sqrt((w ** 2).sum(axis=(1, 2, 3), keepdims=True))
    kernel *= np.exp(3 * params["c_s"])[:, None, None, None]
    padded = np.zeros((2, 3, 8, 8))
    padded[:, :2, 1:-1, 1:-1] = np.where(x0 < 0, np.expm1(x0), x0) if nl == "elu" else x0
    padded[:, 2] = 1
    padded[:, 2, 1:-1, 1:-1] = 0
    flipped = kernel[:, :, ::-1, ::-1]
    size = 6 // stride
    expected = np.zeros((2, 3, size, size))
    for oy, ox in itertools.product(range(size), range(size)):
        patch = padded[:, :, stride * oy:stride * oy + 3, stride * ox:stride * ox + 3]
        expected[:, :, oy, ox] = np.einsum("nchw,ochw->no", patch, flipped)
    expected += params["c_b"][None, :, None, None]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_depth_to_space_layout():
    h = np.arange(2 * 8 * 2 * 3, dtype=floatX).reshape(2, 8, 2, 3)
    x = T.tensor4()
    out = theano.function([x], depth_to_space(x, 2))(h)
    assert out.shape == (2, 2, 4, 6)
    # Channel c*4 + a*2 + b becomes pixel (y*2 + a, x*2 + b) of output channel c.
    for n, c, a, b, y, xx in itertools.product(range(2), range(2), range(2), range(2),
                                               range(2), range(3)):
        assert out[n, c, y * 2 + a, xx * 2 + b] == h[n, c * 4 + a * 2 + b, y, xx]


@pytest.fixture(scope="module")
def logistic_mass():
    x, mean, logscale = T.vector(), T.scalar(), T.scalar()
    return theano.function([x, mean, logscale],
                           T.exp(discretized_logistic_logps(x, mean, logscale)))


@pytest.mark.parametrize("mean,logscale", [(0.5, -3.0), (0.1, -2.0), (0.93, -4.5), (0.5, 0.0)])
def test_discretized_logistic_bins_plus_tails_sum_to_one(logistic_mass, mean, logscale):
    values = ((np.arange(256) + 0.5) / 256).astype(floatX)
    mass = logistic_mass(values, mean, logscale).astype(np.float64)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    scale = math.exp(logscale)
    # The original gives no tail mass to the edge bins (docs/model.md §8): the 256 masses plus
    # the two tails it leaves out, less the 256 * 1e-7 it adds inside the log, make 1.
    tails = sigmoid((0 - mean) / scale) + 1 - sigmoid((1 - mean) / scale)
    assert abs(mass.sum() - 256e-7 + tails - 1) < 2e-5
    if mean == 0.5 and logscale <= -3:  # tails negligible: the bins alone sum to ~1
        assert abs(mass.sum() - 1) < 1e-4


def test_gaussian_logps_matches_closed_form():
    z, m, lv = T.vector(), T.vector(), T.vector()
    f = theano.function([z, m, lv], gaussian_diag_logps(z, m, lv))
    rng = np.random.RandomState(3)
    z0, m0, lv0 = (rng.randn(5).astype(floatX) for _ in range(3))
    expected = -0.5 * np.log(2 * np.pi * np.exp(lv0)) - (z0 - m0) ** 2 / (2 * np.exp(lv0))
    np.testing.assert_allclose(f(z0, m0, lv0), expected, rtol=1e-5)


def test_flipped_mask_still_zeroes_the_first_groups_centre_tap_as_the_original():
    params = {}
    conv = MaskedConv2d(params, np.random.RandomState(5), "f", 3, 3, (3, 3), zerodiagonal=True,
                        flipmask=True)
    params["f_w"] = np.ones_like(params["f_w"])
    kernel = theano.function([], conv.kernel(symbolic(params)))()
    assert conv.mask[:1, :, 1, 1].sum() > 0  # the flipped mask alone would keep these
    assert np.all(kernel[:1, :, 1, 1] == 0)
    assert np.any(kernel[1:, :, 1, 1] != 0)
