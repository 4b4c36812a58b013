"""Our C ops against the plain Theano they replace: the oneDNN convolution layer against
the original's ELU, pad channel, conv2d and bias (with the ELU folded in by the graph
rewrite), ELU, the weight-norm, channel-norm, parameter-view and optimiser ops against
their plain twins or elementwise expressions. The bf16 convolutions are in test_bf16.py."""
import numpy as np
import pytest

from layers import ops
from layers.ops import channel_norm, elementwise, views, weight_norm
from layers.ops.channel_norm import ChannelNormalise
from layers.ops.elementwise import ELU, ELUGrad
from layers.ops.onednn_conv import OnednnConv, OnednnConvGradInputs, OnednnConvGradWeights
from layers.runtime.backend import T, floatX, theano

plain_elu = elementwise.plain


def layer_and_grads(layer):
    """f(x, w, b, gy) -> (y, dL/dw, dL/dx, dL/db) for L = sum(gy * layer(x, w, b))."""
    x, w, b, gy = T.tensor4("x"), T.tensor4("w"), T.vector("b"), T.tensor4("gy")
    y = layer(x, w, b)
    return theano.function([x, w, b, gy], [y] + T.grad(None, [w, x, b], known_grads={y: gy}))


def _original_layer(stride, elu_input, pad_channel, taps):
    """The layer as the original builds it: ELU, then zero padding and a concatenated pad
    channel (1 on the padding only), a 'valid' conv2d with the image channels' kernel
    zeroed outside the taps (3x3 kernels), then the bias."""
    def layer(x, w, b):
        a = plain_elu(x) if elu_input else x
        if taps is not None:
            tap_mask = np.zeros(9, floatX)
            tap_mask[list(taps)] = 1
            tap_mask = tap_mask.reshape(1, 1, 3, 3)
            w = T.concatenate([w[:, :-1] * tap_mask, w[:, -1:]], axis=1) if pad_channel \
                else w * tap_mask
        subsample = (stride, stride)
        if not pad_channel:
            return T.nnet.conv2d(a, w, border_mode="half", subsample=subsample) + \
                b.dimshuffle("x", 0, "x", "x")
        n, c, height, width = a.shape
        ph, pw = (w.shape[2] - 1) // 2, (w.shape[3] - 1) // 2
        padded = T.set_subtensor(T.zeros((n, c + 1, height + 2 * ph, width + 2 * pw))[:, c:], 1)
        padded = T.set_subtensor(padded[:, c:, ph:ph + height, pw:pw + width], 0)
        padded = T.set_subtensor(padded[:, :c, ph:ph + height, pw:pw + width], a)
        return T.nnet.conv2d(padded, w, border_mode="valid", subsample=subsample) + \
            b.dimshuffle("x", 0, "x", "x")
    return layer


TAPS = (0, 2, 4, 7)  # of a 3x3 kernel: (0, 0), (0, 2), (1, 1), (2, 1)
MASKED_TAPS = (4, 5, 6, 7, 8)  # a masked convolution's: the centre, right of it, below
# (stride, elu_input, pad_channel, taps)
OPTIONS = [(1, False, False, None), (1, True, False, None), (1, False, True, None),
           (1, True, True, None), (1, True, True, TAPS), (1, True, True, MASKED_TAPS),
           (2, True, True, None), (2, False, False, None)]
_compiled = {}


def options_of(options, precision="fp32"):
    """The ops' keyword arguments for ``(stride, elu_input, pad_channel, taps)``."""
    stride, elu_input, pad_channel, taps = options
    return dict(stride=stride, elu_input=elu_input, pad_channel=pad_channel, taps=taps,
                precision=precision)


def layers(options, precision="fp32"):
    """Our op and the original's layer with these options, compiled once per module."""
    if (options, precision) not in _compiled:
        op = OnednnConv(**options_of(options, precision))
        ours = layer_and_grads(lambda x, w, b: op(x, w, b))
        _compiled[options, precision] = ours, layer_and_grads(_original_layer(*options))
    return _compiled[options, precision]


# (images, channels, height, width, filters, kernel): non-square images and kernels, odd
# sizes (for stride 2), 1x1, more channels than a vector register holds, more images.
SHAPES = [(3, 5, 7, 6, 4, (3, 3)), (5, 2, 24, 24, 3, (3, 3)), (4, 3, 9, 5, 2, (5, 5)),
          (2, 4, 6, 8, 3, (1, 5)), (3, 6, 5, 5, 7, (1, 1)), (17, 3, 8, 8, 5, (3, 3)),
          (2, 37, 6, 6, 19, (3, 3))]


def random_inputs(shape, pad_channel=False, stride=1, seed=0):
    n, c, height, width, f, (kh, kw) = shape
    rng = np.random.RandomState(seed)
    out = ((height - 1) // stride + 1, (width - 1) // stride + 1)
    return (rng.randn(n, c, height, width).astype(floatX),
            rng.randn(f, c + pad_channel, kh, kw).astype(floatX), rng.randn(f).astype(floatX),
            rng.randn(n, f, *out).astype(floatX))


def fits(shape, options):
    """Whether the options' taps are of the shape's kernel (3x3)."""
    return options[3] is None or shape[-1] == (3, 3)


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_output_and_gradients_match_the_originals_layer(shape, options):
    if not fits(shape, options):
        pytest.skip("the taps are those of a 3x3 kernel")
    ours, original = layers(options)
    inputs = random_inputs(shape, pad_channel=options[2], stride=options[0])
    names = ["y", "grad w", "grad x", "grad b"]
    for got, want, name in zip(ours(*inputs), original(*inputs), names):
        assert got.shape == want.shape, name
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("taps", [TAPS, MASKED_TAPS], ids=str)
def test_the_weights_gradient_is_zero_at_the_unused_taps_of_the_image_channels(taps):
    ours, _ = layers((1, True, True, taps))
    grad_w = ours(*random_inputs((3, 5, 7, 6, 4, (3, 3)), pad_channel=True))[1]
    unused = [t for t in range(9) if t not in taps]
    assert not grad_w[:, :-1].reshape(4, 5, 9)[..., unused].any()
    assert grad_w[:, :-1].reshape(4, 5, 9)[..., list(taps)].all()
    assert grad_w[:, -1].reshape(4, 9)[..., unused].any()  # the pad channel uses them all


def test_results_are_identical_on_every_call():
    ours, _ = layers((1, True, True, None))
    inputs = random_inputs((9, 3, 24, 24, 4, (3, 3)), pad_channel=True, seed=1)
    first = ours(*inputs)
    for _ in range(3):
        for a, b in zip(first, ours(*inputs)):
            assert np.array_equal(a, b)


def test_the_options_reach_the_c_code_at_run_time_so_each_pass_compiles_once():
    x, w, b, gy = T.tensor4(), T.tensor4(), T.vector(), T.tensor4()
    for op_class, inputs in ((OnednnConv, (x, w, b)), (OnednnConvGradInputs, (w, gy, x)),
                             (OnednnConvGradWeights, (x, gy, w))):
        codes = set()
        for options in OPTIONS:
            for precision in ("fp32", "bf16"):
                node = op_class(**options_of(options, precision)).make_node(*inputs)
                sub = {"fail": "FAIL", "params": "PARAMS"}
                codes.add(node.op.c_code(node, "name", ["a", "b", "c"], ["y", "z"], sub))
        assert len(codes) == 1, op_class.__name__


def test_an_empty_minibatch_gives_empty_outputs_and_zero_weight_gradients():
    ours, _ = layers((1, True, True, None))
    x, w, b, gy = random_inputs((0, 3, 5, 5, 4, (3, 3)), pad_channel=True)
    y, grad_w, grad_x, grad_b = ours(x, w, b, gy)
    assert y.shape == (0, 4, 5, 5) and grad_x.shape == x.shape
    assert grad_w.shape == w.shape and not grad_w.any() and not grad_b.any()


def test_mismatched_channels_give_a_clear_error():
    ours, _ = layers((1, False, False, None))
    x, w, b, gy = random_inputs((2, 3, 5, 5, 4, (3, 3)))
    with pytest.raises(ValueError, match="OnednnConv: the kernel's input channels do not fit"):
        ours(x, w[:, :2], b, gy)


def test_even_kernels_are_refused():
    ours, _ = layers((1, False, False, None))
    x, w, b, gy = random_inputs((2, 3, 5, 5, 4, (3, 3)))
    with pytest.raises(ValueError, match="kernel sizes must be odd"):
        ours(x, w[:, :, :2, :2], b, gy)


def test_empty_images_are_refused():
    ours, _ = layers((1, False, False, None))
    x, w, b, gy = random_inputs((2, 3, 0, 5, 4, (3, 3)))
    with pytest.raises(ValueError, match="empty images or kernel"):
        ours(x, w, b, gy)


def test_taps_outside_the_kernel_are_refused():
    ours = layer_and_grads(lambda x, w, b: OnednnConv(taps=(0, 9))(x, w, b))
    x, w, b, gy = random_inputs((2, 3, 5, 5, 4, (3, 3)))
    with pytest.raises(ValueError, match="the taps do not fit the kernel"):
        ours(x, w, b, gy)


def test_the_elu_gradient_refuses_a_gradient_of_another_size():
    x, g = T.vector("x"), T.vector("g")
    gradient = theano.function([x, g], ELUGrad()(x, g))
    with pytest.raises(ValueError, match="ELUGrad: x and its gradient differ in size"):
        gradient(np.zeros(5, floatX), np.zeros(4, floatX))


def test_the_elu_op_and_its_gradient_match_the_plain_expression():
    x, g = T.vector("x"), T.vector("g")

    def value_and_gradient(elu):
        y = elu(x)
        return theano.function([x, g], [y, T.grad(None, x, known_grads={y: g})])
    ours = value_and_gradient(ELU())
    assert any(isinstance(node.op, ELU) for node in ours.maker.fgraph.apply_nodes)
    values = [np.concatenate([np.linspace(-100, 5, 200001), -np.logspace(-9, 0, 10001)]).astype(
        floatX), np.random.RandomState(2).randn(210002).astype(floatX)]
    (elu, slope), plain = ours(values[0], np.ones_like(values[0])), value_and_gradient(plain_elu)
    for got, want in zip(ours(*values), plain(*values)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Within one unit in the last place of the exact values (below -87, where exp(x) is
    # under float32's smallest normal number, within 2e-38).
    x = values[0].astype(np.float64)
    exact_elu, exact_slope = np.where(x < 0, np.expm1(x), x), np.where(x < 0, np.exp(x), 1)
    for got, exact in ((elu, exact_elu), (slope, exact_slope)):
        error, ulp = np.abs(got - exact), np.spacing(np.abs(exact).astype(floatX))
        assert (error <= np.where(x < -87, 2e-38, ulp)).all()


def _weight_norm_and_grads(norm, eps, mask):
    """f(v, s, g) -> (kernel, dL/dv, dL/ds) for L = sum(g * kernel)."""
    v, s, g = T.tensor4("v"), T.vector("s"), T.tensor4("g")
    kernel = norm(v, s, eps, mask)
    return theano.function([v, s, g], [kernel] + T.grad(None, [v, s], known_grads={kernel: g}))


def _plain_weight_norm(v, s, eps, mask):
    u = v if mask is None else mask * v
    norm = T.sqrt(T.sqr(u).sum(axis=(1, 2, 3), keepdims=True))
    return u / (norm + eps) * T.exp(3 * s).dimshuffle(0, "x", "x", "x")


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-8])
def test_weight_norm_op_matches_the_plain_expression(eps, masked):
    rng = np.random.RandomState(2)
    mask = (rng.rand(5, 4, 3, 3) > 0.4).astype(floatX) if masked else None
    ours_wn = _weight_norm_and_grads(weight_norm.custom, eps, mask)
    plain = _weight_norm_and_grads(_plain_weight_norm, eps, mask)
    inputs = (rng.randn(5, 4, 3, 3).astype(floatX), 0.3 * rng.randn(5).astype(floatX),
              rng.randn(5, 4, 3, 3).astype(floatX))
    for got, want, name in zip(ours_wn(*inputs), plain(*inputs), ["kernel", "grad v", "grad s"]):
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(),
                                   err_msg=name)
    # Each filter comes out with norm exp(3 s), and zero where masked (so does grad v).
    kernel, grad_v, _ = ours_wn(*inputs)
    np.testing.assert_allclose(np.sqrt((kernel ** 2).sum(axis=(1, 2, 3))), np.exp(3 * inputs[1]),
                               rtol=1e-5)
    if masked:
        assert not kernel[mask == 0].any() and not grad_v[mask == 0].any()


def test_weight_norm_of_a_fully_masked_filter_has_finite_gradients():
    # A masked convolution can zero a whole filter; the norm's epsilon keeps it at 0.
    ours_wn = _weight_norm_and_grads(weight_norm.custom, 1e-8, None)
    rng = np.random.RandomState(3)
    v = rng.randn(3, 2, 3, 3).astype(floatX)
    v[1] = 0
    kernel, grad_v, grad_s = ours_wn(v, np.zeros(3, floatX), rng.randn(3, 2, 3, 3).astype(floatX))
    assert not kernel[1].any()
    assert np.isfinite(grad_v).all() and np.isfinite(grad_s).all() and grad_s[1] == 0


@pytest.mark.parametrize("target_std,eps,zero_channel", [(0.1, 1e-7, False), (1.0, 0.0, False),
                                                        (0.1, 1e-7, True)])
def test_channel_normalise_op_matches_the_plain_expression(target_std, eps, zero_channel):
    h = T.tensor4("h")
    ours = theano.function([h], ChannelNormalise(target_std, eps)(h))
    plain = theano.function([h], list(channel_norm.plain(h, target_std, eps)))
    value = 3 * np.random.RandomState(4).randn(5, 6, 4, 3).astype(floatX) + 2
    if zero_channel:
        value[:, 2] = 1.5  # std 0: nothing is normalised
    got, want = ours(value), plain(value)
    for name, a, b in zip(["h", "s", "b"], got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    assert bool(got[3]) == bool(want[3]) == (not zero_channel)
    if not zero_channel:  # mean 0 and the target standard deviation per channel
        np.testing.assert_allclose(got[0].mean(axis=(0, 2, 3)), 0, atol=1e-6)
        np.testing.assert_allclose(got[0].std(axis=(0, 2, 3)), target_std, rtol=1e-4)


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
    monkeypatch.setattr(ops, "CUSTOM_OPS", custom_op)
    optimiser = AdaMaxPolyak(params, averages, {"masked_w": mask}, alpha=0.01, beta1=0.1,
                             beta2=0.01)
    optimiser.m.set_value((0.1 * rng.randn(params.size)).astype(floatX))
    optimiser.u.set_value((rng.rand(params.size) + 1e-3).astype(floatX))
    g = T.vector("g")
    updates, applied = optimiser.update(g)
    update = theano.function([g], applied, updates=updates, accept_inplace=True)
    assert ("AdaMaxPolyakStep" in str(update.maker.fgraph.toposort())) == custom_op
    applied = update(gradient)
    return (params.buffer.copy(), averages.buffer.copy(), optimiser.m.get_value(),
            optimiser.u.get_value(), bool(applied), mask)


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


@pytest.mark.parametrize("stride,pad_channel,taps", [(1, True, None), (1, True, TAPS),
                                                     (1, False, None), (2, True, None)])
def test_an_elu_in_front_of_the_convolution_is_folded_into_all_three_passes(stride, pad_channel,
                                                                            taps):
    # The model writes conv(elu(x)); the compiled graph has no ELU left, only the
    # convolution ops with their ELU option, and computes the original's layer.
    layer = layer_and_grads(lambda x, w, b: ops.conv2d(ops.elu(x), w, b, (3, 3), stride,
                                                       pad_channel, taps))
    nodes = layer.maker.fgraph.apply_nodes
    assert not any(isinstance(node.op, (ELU, ELUGrad)) for node in nodes)
    convs = [node.op for node in nodes if type(node.op).__name__.startswith("OnednnConv")]
    assert len(convs) == 3 and all(op.elu_input for op in convs)
    inputs = random_inputs(SHAPES[0], pad_channel=pad_channel, stride=stride)
    original = layers((stride, True, pad_channel, taps))[1]
    for got, want in zip(layer(*inputs), original(*inputs)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_parameter_views_op_gives_the_plain_slices():
    shapes = [(2, 3), (), (4,), (1, 2, 1)]
    flat = T.vector("flat")
    got = theano.function([flat], views.custom(flat, shapes))
    want = theano.function([flat], views.plain(flat, shapes))
    assert [v.broadcastable for v in views.custom(flat, shapes)] == \
        [v.broadcastable for v in views.plain(flat, shapes)]
    values = np.arange(13, dtype=floatX)
    for a, b in zip(got(values), want(values)):
        np.testing.assert_array_equal(a, b)
