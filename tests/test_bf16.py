"""conv_precision=bf16: each pass of the bf16 convolution against a float64 convolution,
within the error that rounding its inputs to bf16 implies; training, evaluating and
resuming in bf16 give the numbers of fp32 to within that error; a CPU without bf16 units
gets one sentence."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from layers.ops import onednn
from models.run.checkpoint import load_checkpoint
from test_custom_ops import OPTIONS, SHAPES, fits, layers, random_inputs

ROOT = Path(__file__).resolve().parents[1]
HAS_BF16 = onednn.has_bf16()
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units")

BF16_UNIT = 2.0 ** -8  # bf16 keeps 8 significant bits: rounding to nearest errs <= 2^-8
FP32_UNIT = 2.0 ** -24


def bf16_bound(magnitudes, terms):
    """The largest error of a sum of ``terms`` products whose factors are rounded to bf16
    (each product then errs by at most (1 + u)^2 - 1 of its size, u = 2^-8, and by 2^-23
    more for an ELU computed in fp32 first), summed in fp32 (at most ``terms`` roundings of
    2^-24 of the sum of magnitudes, plus a few for the bias and border term added after):
    ``magnitudes`` is the exact sum of the products' absolute values."""
    product = (1 + BF16_UNIT) ** 2 * (1 + 2 * FP32_UNIT)
    return (product - 1 + (terms + 8) * FP32_UNIT * product) * magnitudes


def _elu(x):
    return np.where(x < 0, np.expm1(np.minimum(x, 0)), x)


def _padded(a, kernel, pad_channel):
    """a zero-padded by (k - 1) / 2, with the pad channel appended if the kernel has one."""
    (kh, kw) = kernel
    l, m = (kh - 1) // 2, (kw - 1) // 2
    padded = np.pad(a, ((0, 0), (0, 0), (l, l), (m, m)))
    if not pad_channel:
        return padded
    border = np.ones((a.shape[0], 1) + padded.shape[2:])
    border[:, :, l:l + a.shape[2], m:m + a.shape[3]] = 0
    return np.concatenate([padded, border], axis=1)


def reference(x, w, b, gy, stride, elu_input, pad_channel, taps, absolute=False):
    """The layer's output and its gradients with respect to w, x, b in float64, as
    test_custom_ops' original layer defines them; with ``absolute``, the same sums of
    the products' absolute values (the bound's magnitudes)."""
    x, w, b, gy = (v.astype(np.float64) for v in (x, w, b, gy))
    kh, kw = w.shape[2:]
    mask = np.ones_like(w)  # the image channels' kernel is zero outside the taps
    if taps is not None:
        mask[:, :x.shape[1]] = 0
        mask[:, :x.shape[1]].reshape(len(w), -1, kh * kw)[..., list(taps)] = 1
    w = w * mask
    a = _elu(x) if elu_input else x
    slope = np.where(x < 0, np.exp(np.minimum(x, 0)), 1.0) if elu_input else np.ones_like(x)
    if absolute:
        a, w, b, gy = np.abs(a), np.abs(w), np.abs(b), np.abs(gy)
    padded = _padded(a, (kh, kw), pad_channel)
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    flipped = w[:, :, ::-1, ::-1]
    y = np.einsum("ncyxab,fcab->nfyx", windows, flipped) + b[:, None, None]
    grad_w = np.einsum("ncyxab,nfyx->fcab", windows, gy)[:, :, ::-1, ::-1] * mask
    grad_padded = np.zeros_like(padded)
    out_h, out_w = gy.shape[2:]
    for i in range(kh):
        for j in range(kw):
            grad_padded[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride] += \
                np.einsum("fc,nfyx->ncyx", flipped[:, :, i, j], gy)
    l, m = (kh - 1) // 2, (kw - 1) // 2
    grad_x = grad_padded[:, :x.shape[1], l:l + x.shape[2], m:m + x.shape[3]] * slope
    return y, grad_w, grad_x, gy.sum(axis=(0, 2, 3))


@needs_bf16
@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_each_pass_in_bf16_is_within_the_error_of_its_rounding(shape, options):
    if not fits(shape, options):
        pytest.skip("the taps are those of a 3x3 kernel")
    stride, _, pad_channel, _ = options
    inputs = random_inputs(shape, pad_channel=pad_channel, stride=stride, seed=3)
    x, w, b, gy = inputs
    exact = reference(*inputs, *options)
    magnitudes = reference(*inputs, *options, absolute=True)
    n, c, f, (kh, kw) = shape[0], shape[1], shape[4], shape[5]
    terms = [(c + 1) * kh * kw, n * gy.shape[2] * gy.shape[3], f * kh * kw, 0]
    bf16 = layers(options, "bf16")[0](*inputs)
    fp32 = layers(options, "fp32")[0](*inputs)
    for name, got, want, size, count, single in zip(["y", "grad w", "grad x", "grad b"], bf16,
                                                    exact, magnitudes, terms, fp32):
        error = np.abs(got - want)
        assert (error <= bf16_bound(size, count)).all(), name
        if name != "grad b":  # rounded to bf16 indeed: far from fp32's error
            assert error.max() > 20 * np.abs(single - want).max(), name
    np.testing.assert_array_equal(bf16[3], fp32[3])  # the bias's gradient stays fp32


@needs_bf16
def test_the_bound_catches_a_convolution_that_misses_one_tap():
    # The bound is tight enough to fail a wrong convolution: the bf16 op given a kernel
    # whose image channels lack one tap, against the exact output of the whole kernel.
    options = (1, False, True, None)
    inputs = random_inputs(SHAPES[0], pad_channel=True, seed=3)
    wrong = inputs[1].copy()
    wrong[:, :-1, 0, 0] = 0
    y = layers(options, "bf16")[0](inputs[0], wrong, *inputs[2:])[0]
    exact, magnitudes = (reference(*inputs, *options, absolute=a)[0] for a in (False, True))
    assert (np.abs(y - exact) > bf16_bound(magnitudes, 6 * 9)).any()


# -- whole runs ----------------------------------------------------------------------------
TINY = ["problem=toy", "n_train=64", "n_batch=16", "n_epochs=2", "n_h=16", "n_z=4",
        "depths=[1,1]", "margs.posterior=down_iaf2_nl", "seed=1"]


def train(args, logs, env=None):
    return subprocess.run([sys.executable, str(ROOT / "train.py")] + args,
                          env={**os.environ, "ML_LOG_PATH": str(logs), **(env or {})},
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny run in each precision: precision -> its folder."""
    folders = {}
    for precision in ("fp32", "bf16"):
        logs = tmp_path_factory.mktemp(precision)
        proc = train(["with"] + TINY + [f"conv_precision={precision}"], logs)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        folders[precision] = next(logs.iterdir())
    return folders


def _reported(folder):
    """The run's reports, one row per epoch: epoch, train cost, test cost."""
    history = load_checkpoint(folder, log=print)[1]["loop"]["history"]
    return np.array([[epoch, train, test] for (epoch, train), (_, test) in
                     zip(history["train"], history["test"])])


@needs_bf16
def test_a_bf16_run_reports_the_costs_of_an_fp32_run(runs):
    fp32, bf16 = _reported(runs["fp32"]), _reported(runs["bf16"])
    assert fp32.shape == bf16.shape == (2, 3)
    # bf16 rounding errs far below 0.02 bits/dim, the README example's criterion: this
    # model's costs differ by about 2e-5.
    assert np.abs(bf16[:, 1:] - fp32[:, 1:]).max() <= 0.002
    assert not np.array_equal(bf16, fp32)  # the convolutions did round
    config = json.loads((runs["bf16"] / "config.json").read_text())
    assert config["conv_precision"] == "bf16"
    log = (runs["bf16"] / "log.txt").read_text()
    assert "Convolutions: oneDNN, bf16 inputs (forward: " in log


def _evaluate(folder, logs, *settings):
    proc = train(["evaluate", "with", f"load_model_path={folder}", *settings], logs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_bf16
def test_the_same_weights_evaluate_alike_in_both_precisions(runs, tmp_path):
    # A bf16 run is evaluated in bf16 unless told otherwise: its logged test cost again.
    bf16 = _evaluate(runs["bf16"], tmp_path)
    assert bf16["cost"] == pytest.approx(_reported(runs["bf16"])[-1, 2], abs=1e-6)
    fp32 = _evaluate(runs["bf16"], tmp_path, "conv_precision=fp32")
    for key in ("cost", "elbo"):  # the README example's criterion is 0.005
        assert abs(fp32[key] - bf16[key]) <= 0.0005, key
    assert fp32["cost"] != bf16["cost"]


@pytest.mark.parametrize("env,says", [
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
     ["needs a CPU with AMX-BF16 or AVX512-BF16 instructions, and this one has neither",
      "conv_precision=fp32 works on any CPU"]),
    ({"IAF_CUSTOM_OPS": "0"}, ["IAF_CUSTOM_OPS=0 selects plain Theano's, which is fp32 only"])])
def test_bf16_without_its_units_is_refused_in_one_sentence_before_anything_is_made(
        tmp_path, env, says):
    # ONEDNN_MAX_CPU_ISA makes oneDNN act as on a CPU without bf16 units.
    proc = train(["with"] + TINY + ["conv_precision=bf16"], tmp_path, env)
    assert proc.returncode != 0
    for part in says:
        assert part in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # no run folder
