"""An independent NumPy forward pass of the ResNet VAE, written from docs/model.md alone.

It exists to pin the model's arithmetic: `tests/test_reference.py` feeds the same weights,
images and posterior noise to this code and to the Theano graph and compares the costs.
Nothing here is derived from the Theano code; every function cites the section of
docs/model.md (the specification) it implements:

- §1 input scaling and padding: `scaled_input`
- §2 weight-normalised convolution (pad channel, weight norm, true convolution with stride,
  depth-to-space): `conv2d` and its helpers
- §3 masked convolutions (`ar_mask`, `masked_conv2d`)
- §4 IAF networks and the masked ResNet (`iaf_network`, `masked_resnet`)
- §5 one stochastic layer and its channel layout (`up_parts`, `down_parts`, `bottom_up`,
  `top_down`)
- §6 posteriors, the IAF step and the priors (`sample_posterior`, `flow`, `prior`)
- §7 the whole model (`forward`) and its nonlinearities (`NONLINEARITIES`)
- §8 likelihoods and the objective (`log_px`, `objective`)

Everything is float64; convolutions are im2col with `sliding_window_view` + `einsum`.

Where the document leaves a choice, this code takes the reading noted at the place:
padding pads `xf` (§1); with `px='bernoulli'` `cost` is in nats per image, `elbo` in
bits/dim (§8); the single-conv flow (`{name}_posterior_conv1` without a network) is
zerodiagonal; the masked ResNet's outputs read `h` itself, not `nl(h)` (§4); `flipmask`
reverses the whole mask, pad channel included (§3).
"""
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

LOG_2PI = math.log(2 * math.pi)


# -- §7: nonlinearities ---------------------------------------------------------------
def _elu(h):
    return np.where(h >= 0, h, np.expm1(np.minimum(h, 0)))


NONLINEARITIES = {
    "elu": _elu,
    "relu": lambda h: np.maximum(h, 0.0),
    "softplus": lambda h: np.logaddexp(0.0, h),
    "tanh": np.tanh,
    "leakyrelu": lambda h: np.where(h >= 0, h, 0.01 * h),
    "shiftedrelu": lambda h: np.maximum(h, -1.0),
    "none": lambda h: h,
}


# -- §1: input -------------------------------------------------------------------------
def scaled_input(x, pad_x):
    """`xf = clip((x + 0.5) / 256, 0, 1)`, then zero-padded by `pad_x` pixels per side.

    §1 says "the image is zero-padded" without saying whether the uint8 `x` (border
    `xf = 0.5/256`) or `xf` (border `xf = 0`, encoder input -0.5) is padded; the model pads
    `xf`, and so does this. The likelihood and `D` (§8) then cover the padded image.
    """
    xf = np.clip((np.asarray(x, np.float64) + 0.5) / 256.0, 0.0, 1.0)
    return np.pad(xf, ((0, 0), (0, 0), (pad_x, pad_x), (pad_x, pad_x)))


# -- §2: weight-normalised convolution ---------------------------------------------------
def with_pad_channel(h, kh, kw):
    """Zero-pad by (kh-1)/2 rows, (kw-1)/2 columns and append a channel that is 1 on the
    padded border, 0 inside. A 1x1 kernel gets neither."""
    if kh == 1 and kw == 1:
        return h
    l, m = (kh - 1) // 2, (kw - 1) // 2
    n, _, height, width = h.shape
    padded = np.pad(h, ((0, 0), (0, 0), (l, l), (m, m)))
    border = np.ones((n, 1, height + 2 * l, width + 2 * m))
    border[:, :, l:l + height, m:m + width] = 0.0
    return np.concatenate([padded, border], axis=1)


def weight_norm(v, s, eps=0.0):
    """`v / ||v|| * exp(3 s)`, the norm over everything but the output channel (§2);
    masked convolutions add `eps = 1e-8` to the norm (§3)."""
    norm = np.sqrt((v ** 2).sum(axis=(1, 2, 3), keepdims=True)) + eps
    return v / norm * np.exp(3.0 * s)[:, None, None, None]


def true_convolution(h, kernel, stride=1):
    """'valid' convolution with the kernel flipped (as Theano's conv2d), with a stride."""
    kh, kw = kernel.shape[2:]
    windows = sliding_window_view(h, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("ncyxab,ocab->noyx", windows, kernel[:, :, ::-1, ::-1], optimize=True)


def depth_to_space(h, u):
    """`(N, C*u*u, H, W)` -> `(N, C, H*u, W*u)`: channel `c*u*u + a*u + b` becomes pixel
    `(y*u + a, x*u + b)`."""
    if u == 1:
        return h
    n, cuu, height, width = h.shape
    c = cuu // (u * u)
    h = h.reshape(n, c, u, u, height, width).transpose(0, 1, 4, 2, 5, 3)
    return h.reshape(n, c, height * u, width * u)


def apply_conv(h, kernel, b, stride=1, upsample=1):
    """Pad channel, true convolution with stride, `+ b`, depth-to-space (§2)."""
    kh, kw = kernel.shape[2:]
    out = true_convolution(with_pad_channel(h, kh, kw), kernel, stride) + b[:, None, None]
    return depth_to_space(out, upsample)


def conv2d(h, p, stride=1, upsample=1):
    """`Conv2d` (§2) with parameters `p = (w, b, s)`."""
    w, b, s = p
    return apply_conv(h, weight_norm(w, s), b, stride, upsample)


# -- §3: masked (autoregressive) convolution ---------------------------------------------
def ar_mask(shape, n_in, zerodiagonal, flipmask=False):
    """The mask `M` of a weight of `shape = (n_out, n_in [+ 1 pad channel], kh, kw)`."""
    n_out, n_in_w, kh, kw = shape
    l, m = (kh - 1) // 2, (kw - 1) // 2
    mask = np.ones(shape)
    mask[:, :, :l, :] = 0.0
    mask[:, :, l, :m] = 0.0
    out = np.arange(n_out)[:, None]
    inp = np.arange(n_in_w)[None, :]  # includes the pad channel (index n_in), never seen
    if n_out >= n_in:
        group = out // (n_out // n_in)
        seen = (inp < group) if zerodiagonal else (inp <= group)
    else:
        k = n_in // n_out
        seen = (inp < out * k) if zerodiagonal else (inp < (out + 1) * k)
    mask[:, :, l, m] = seen
    # Reversed along all four axes of the weight's shape, the pad channel included (the
    # pad channel is 0 at the centre tap's input pixel, so where it lands does not matter).
    if flipmask:
        mask = mask[::-1, ::-1, ::-1, ::-1]
    return mask


def masked_kernel(w, s, n_in, zerodiagonal, flipmask):
    """`w * M`, the first output group's centre tap zeroed (with `zerodiagonal`), then the
    weight norm with `+ 1e-8` (§3)."""
    n_out, _, kh, kw = w.shape
    v = w * ar_mask(w.shape, n_in, zerodiagonal, flipmask)
    if zerodiagonal:
        first = n_out // n_in if n_out >= n_in else 1
        v = v.copy()
        v[:first, :, (kh - 1) // 2, (kw - 1) // 2] = 0.0
    return weight_norm(v, s, eps=1e-8)


def masked_conv2d(h, p, zerodiagonal, flipmask=False):
    """`MaskedConv2d` (§3), stride 1; `n_in` is the input's channel count."""
    w, b, s = p
    kernel = masked_kernel(w, s, h.shape[1], zerodiagonal, flipmask)
    return apply_conv(h, kernel, b)


# -- §4: IAF networks ----------------------------------------------------------------------
def iaf_network(params, name, z, context, depth, n_outputs, nl, flipmask=False):
    """`IAFNetwork` (`ar_multiconv2d`): `depth` hidden masked convs (zerodiagonal=False),
    the context added to the first one's output before the nonlinearity, then one
    zerodiagonal output conv per output."""
    h = z
    for i in range(depth):
        h = masked_conv2d(h, params.conv(f"{name}_{i}"), False, flipmask)
        if i == 0:
            h = h + context
        h = nl(h)
    return [masked_conv2d(h, params.conv(f"{name}_out_{j}"), True, flipmask)
            for j in range(n_outputs)]


def masked_resnet(params, name, z, context, depth, n_outputs, nl):
    """`MaskedResNet` (§4): input conv + context, `depth` blocks
    `h + 0.1 * c2(nl(c1(nl(h))))`, then zerodiagonal output convs of `h` (§4 names no
    nonlinearity before them)."""
    h = masked_conv2d(z, params.conv(f"{name}_input"), False) + context
    for i in range(depth):
        inner = masked_conv2d(nl(h), params.conv(f"{name}_{i}_conv1"), False)
        h = h + 0.1 * masked_conv2d(nl(inner), params.conv(f"{name}_{i}_conv2"), False)
    return [masked_conv2d(h, params.conv(f"{name}_out_{j}"), True) for j in range(n_outputs)]


# -- parameters by name (§2-§7, incl. weight sharing) ------------------------------------
class Params:
    """The weights dict, looked up by the names of §2-§7 (`{name}_w/_b/_s`)."""

    def __init__(self, weights, weightsharing):
        self.weights = {k: np.asarray(v, np.float64) for k, v in weights.items()}
        self.sharing = weightsharing or False

    def __getitem__(self, name):
        return self.weights[name]

    def conv(self, name, layer=None):
        """`(w, b, s)` of convolution `name`; `layer = (i, j)` for a layer's convolution,
        whose `_w` may be shared (§7) and whose name is then `{i}_{j}_{name}`."""
        if layer is None:
            return tuple(self.weights[f"{name}_{k}"] for k in "wbs")
        i, j = layer
        own = f"{i}_{j}_{name}"
        shared = {False: own, "all": f"[s]_{name}",
                  "acrosslevels": f"[s]_{j}_{name}", "withinlevel": f"[s]_{j}_{name}"}
        return (self.weights[shared[self.sharing] + "_w"],
                self.weights[own + "_b"], self.weights[own + "_s"])

    def layer(self, i, j):
        """The parameters of layer `{i}_{j}`, looked up by role (`up_conv2`, ...)."""
        return LayerParams(self, (i, j))


class LayerParams:
    def __init__(self, params, layer):
        self.params, self.layer = params, layer

    def conv(self, name):
        return self.params.conv(name, self.layer)


# -- §5: the channel layout ----------------------------------------------------------------
def up_parts(config):
    """Parts of `up_conv1`'s output, in order, as (name, channels)."""
    post = parse_posterior(config.posterior)
    parts = [("h", config.n_h2), ("qz_mean", config.n_z), ("qz_logsd", config.n_z)]
    if post["network"]:
        parts.append(("up_context", config.n_h2))
    return parts


def down_parts(config):
    """Parts of `down_conv1`'s output, in order, as (name, channels)."""
    post = parse_posterior(config.posterior)
    parts = [("h", config.n_h2)]
    if config.prior in ("diag", "diag2"):
        parts += [("pz_mean", config.n_z), ("pz_logsd", config.n_z)]
    if config.prior == "made":
        parts.append(("prior_context", config.n_h2))
    if post["where"] == "down" and post["kind"] != "tim":
        parts += [("rz_mean", config.n_z), ("rz_logsd", config.n_z)]
    if post["where"] == "down" and post["network"]:
        parts.append(("down_context", config.n_h2))
    return parts


def split(h, parts):
    out, start = {}, 0
    for name, n in parts:
        out[name] = h[:, start:start + n]
        start += n
    assert start == h.shape[1], (start, h.shape)
    return out


def parse_posterior(name):
    """`{where}_{kind}[_{network}]` (§6)."""
    where, kind, network = (name.split("_") + [""])[:3]
    return {"where": where, "kind": kind, "network": network}


# -- §6: posteriors, the IAF step, priors --------------------------------------------------
def log_normal(z, mean, logvar):
    """`log N(z; m, exp(v)) = -(log(2 pi) + v + (z - m)^2 / exp(v)) / 2`, elementwise."""
    return -(LOG_2PI + logvar + (z - mean) ** 2 / np.exp(logvar)) / 2


def iaf_step(z, logq, m, s=None):
    """`z <- (z - 0.1 m) / exp(0.1 s)`, `log q <- log q + 0.1 s`; mean-only without `s`."""
    if s is None:
        return z - 0.1 * m, logq
    return (z - 0.1 * m) / np.exp(0.1 * s), logq + 0.1 * s


def flow(config, params, z, logq, context, nl):
    """The posterior's flow steps (§6: kind iaf1/iaf2, network none/nl/nl2/deep)."""
    post = parse_posterior(config.posterior)
    if post["kind"] not in ("iaf1", "iaf2"):
        return z, logq
    scale = post["kind"] == "iaf2"
    n_outputs = 2 if scale else 1

    def step(z, logq, outputs):
        return iaf_step(z, logq, outputs[0], outputs[1] if scale else None)

    network = post["network"]
    if network == "":
        # §6 does not say; zerodiagonal, or the step would not be autoregressive
        out = masked_conv2d(z, params.conv("posterior_conv1"), True)
        outputs = [out[:, 0::2], out[:, 1::2]] if scale else [out]
        return step(z, logq, outputs)
    if network == "deep":
        outputs = masked_resnet(params, "deepiaf", z, context, config.depth_ar, n_outputs, nl)
        return step(z, logq, outputs)
    # nl: one network; nl2: a second one with the flipped mask
    steps = [("posterior_conv1", False)] + ([("posterior_conv2", True)] if network == "nl2" else [])
    for name, flipmask in steps:
        outputs = iaf_network(params, name, z, context, config.depth_ar, n_outputs, nl, flipmask)
        z, logq = step(z, logq, outputs)
    return z, logq


def sample_posterior(config, params, mean, logsd, eps, context, nl):
    """`z = mean + exp(logsd) * eps`, elementwise `log q`, then the flow (§6)."""
    z = mean + np.exp(logsd) * eps
    logq = log_normal(z, mean, 2 * logsd)
    return flow(config, params, z, logq, context, nl)


def prior(config, params, parts, z, nl):
    """Elementwise `log p(z)` and the `z` the decoder sees (§6, inference)."""
    if config.prior == "diag":
        return log_normal(z, parts["pz_mean"], 2 * parts["pz_logsd"]), z
    if config.prior == "diag2":
        return log_normal(z, 0.0, 0.0), parts["pz_mean"] + np.exp(parts["pz_logsd"]) * z
    # made
    m, s = iaf_network(params, "prior_conv1", z, parts["prior_context"], config.depth_ar, 2, nl)
    return log_normal(z, 0.1 * m, 2 * 0.1 * s), z


# -- §5: one stochastic layer ----------------------------------------------------------------
def avg_pool2(h):
    n, c, height, width = h.shape
    return h.reshape(n, c, height // 2, 2, width // 2, 2).mean(axis=(3, 5))


def upsample_nn2(h):
    return h.repeat(2, axis=2).repeat(2, axis=3)


def bottom_up(config, params, h_in, ds, eps, nl):
    """Returns the block's output and its state: the up parts and, for bottom-up
    posteriors, `z` and `log q`."""
    post = parse_posterior(config.posterior)
    parts = split(conv2d(nl(h_in), params.conv(f"up_conv1_{ds}"), stride=ds), up_parts(config))
    state = {"up": parts}
    if post["where"] == "up":
        z, logq = sample_posterior(config, params, parts["qz_mean"], parts["qz_logsd"], eps,
                                   parts.get("up_context"), nl)
        state.update(z=z, logq=logq)
        h = np.concatenate([parts["h"], z], axis=1)
    elif post["kind"] == "tim":
        h = np.concatenate([parts["h"], parts["qz_mean"]], axis=1)
    else:
        h = parts["h"]
    if ds == 1:
        residual = h_in
    elif config.downsample_type == "conv":
        residual = conv2d(h_in, params.conv("up_conv3"), stride=2)
    else:
        residual = avg_pool2(h_in)
    return residual + 0.1 * conv2d(nl(h), params.conv("up_conv2")), state


def top_down(config, params, h_in, ds, eps, state, nl):
    """Inference: returns the block's output and the elementwise `kl = log q - log p`."""
    post = parse_posterior(config.posterior)
    parts = split(conv2d(nl(h_in), params.conv("down_conv1")), down_parts(config))
    up = state["up"]
    if post["where"] == "up":
        z, logq = state["z"], state["logq"]
    elif post["kind"] == "tim":
        precision_q = np.exp(-2 * up["qz_logsd"])
        precision_p = np.exp(-2 * parts["pz_logsd"])
        precision = precision_q + precision_p
        mean = (precision_q * up["qz_mean"] + precision_p * parts["pz_mean"]) / precision
        logsd = -0.5 * np.log(precision)
        z, logq = sample_posterior(config, params, mean, logsd, eps, None, nl)
    else:
        context = (up["up_context"] + parts["down_context"]) if post["network"] else None
        z, logq = sample_posterior(config, params, up["qz_mean"] + parts["rz_mean"],
                                   up["qz_logsd"] + parts["rz_logsd"], eps, context, nl)
    logp, z_dec = prior(config, params, parts, z, nl)
    if ds == 1:
        residual = h_in
    elif config.downsample_type == "conv":
        residual = conv2d(h_in, params.conv("down_conv3"), upsample=2)
    else:
        residual = upsample_nn2(h_in)
    h = np.concatenate([parts["h"], z_dec], axis=1)
    out = residual + 0.1 * conv2d(nl(h), params.conv(f"down_conv2_{ds}"), upsample=ds)
    return out, logq - logp


# -- §8: likelihoods and objective ---------------------------------------------------------
def sigmoid(h):
    return 0.5 * (1.0 + np.tanh(0.5 * h))


def log_px(config, out, xf, logsd_x):
    """`log p(x|z)` per image: discretised logistic or Bernoulli, both of `xf` (§8)."""
    if config.px == "logistic":
        mean = np.clip(out + 0.5, 1 / 512, 1 - 1 / 512)
        scale = np.exp(logsd_x)
        u = (np.floor(256 * xf) / 256 - mean) / scale
        logp = np.log(sigmoid(u + 1 / (256 * scale)) - sigmoid(u) + 1e-7)
    else:
        p = np.clip(sigmoid(out), 1e-7, 1 - 1e-7)
        logp = xf * np.log(p) + (1 - xf) * np.log(1 - p)
    return logp.sum(axis=(1, 2, 3))


def objective(config, logpx, kls, n_dims):
    """Per-image `cost`, `elbo`, `cost_x`, `log_weight` from `log p(x|z)` and the
    per-layer elementwise KL (§8)."""
    kl_sum = sum(kl.sum(axis=(1, 2, 3)) for kl in kls)
    if config.kl_min > 0:
        # per layer and feature map: summed over pixels, averaged over images, floored
        kl_term = sum(np.maximum(kl.sum(axis=(2, 3)).mean(axis=0), config.kl_min).sum()
                      for kl in kls)
    else:
        kl_term = kl_sum
    bits_per_dim = n_dims * math.log(2)
    # §8: `cost` is in bits/dim, "in nats for Bernoulli, as the original". The model reads
    # that as nats per image (not divided by D); `elbo` is in bits/dim for both.
    cost_unit = bits_per_dim if config.px == "logistic" else 1.0
    return {"cost": -(logpx - kl_term) / cost_unit, "elbo": -(logpx - kl_sum) / bits_per_dim,
            "cost_x": -logpx, "log_weight": logpx - kl_sum}


# -- §7: the whole model -------------------------------------------------------------------
def layer_order(config):
    """`(i, j, ds)` for every layer: level 0 first, `j` ascending."""
    return [(i, j, 2 if (i > 0 and j == 0) else 1)
            for i, depth in enumerate(config.depths) for j in range(depth)]


def forward(config, weights, x, eps):
    """The model's evaluation outputs for uint8 images `x` (N, C, H, W) and posterior noise
    `eps` (one array per layer, in layer order): per-image `cost`, `cost_x`, `elbo`,
    `log_weight` and per-layer KL `cost_z{i:03d}_{j:03d}` in nats."""
    nl = NONLINEARITIES[config.nl]
    params = Params(weights, config.weightsharing)
    eps = [np.asarray(e, np.float64) for e in eps]
    xf = scaled_input(x, config.pad_x)
    n = xf.shape[0]

    h = conv2d(xf - 0.5, params.conv("x_enc"), stride=2)
    layers = layer_order(config)
    states = []
    for (i, j, ds), e in zip(layers, eps):
        h, state = bottom_up(config, params.layer(i, j), h, ds, e, nl)
        states.append(state)

    height, width = xf.shape[2:]
    factor = 2 ** len(config.depths)
    h_top = params["h_top"]
    h = np.broadcast_to(h_top[None, :, None, None],
                        (n, h_top.shape[0], height // factor, width // factor))
    kls = [None] * len(layers)
    for k in reversed(range(len(layers))):
        i, j, ds = layers[k]
        h, kls[k] = top_down(config, params.layer(i, j), h, ds, eps[k], states[k], nl)

    out = 0.1 * conv2d(nl(h), params.conv("x_dec"), upsample=2)
    logpx = log_px(config, out, xf, params.weights.get("logsd_x"))
    results = {f"cost_z{i:03d}_{j:03d}": kl.sum(axis=(1, 2, 3))
               for (i, j, _), kl in zip(layers, kls)}
    results.update(objective(config, logpx, kls, np.prod(xf.shape[1:])))
    return results
