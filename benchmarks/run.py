"""Speed and memory of the training step, for the Table 3 and README-example configs, with
the convolutions in fp32 and in bf16.

    python benchmarks/run.py                      # both configs, both precisions: writes
                                                  # benchmarks/results.{md,json}
    python benchmarks/run.py readme_example --steps 10 --precision bf16   # replaces
                                                  # that row of benchmarks/results.*

For each config and precision, fresh processes build the model and time it, all with one
new Theano compile directory: the first finds it empty (cold compile: C code and graphs), the second
reuses the C code but not the compiled functions (warm start: Theano optimises the graphs
again), the third and fourth use the function cache (layers/runtime/function_cache.py; the third
fills it, the fourth shows the cached start). Reported: those start times (process start,
or for the cold one the data-dependent init, to the end of the first training step),
seconds per training step (median over ``--steps`` after one warm-up step) and per
evaluation minibatch, images/s, achieved GFLOP/s (convolution FLOPs counted analytically:
forward, and 3x forward for a training step), the fraction of the machine's matrix-multiply
peak (a 2048x2048 float32 GEMM through the same BLAS, timed after each training step in
the same process: the median) and of its fp32 FMA peak (register-only FMA chains on every
core, benchmarks/fma_chains.c, timed right after the GEMM) and of its bf16 matrix peak (a
large oneDNN matmul of bf16 matrices on all cores, benchmarks/bf16_matmul.c, timed right
after the FMA peak, on a CPU with bf16 units), the oneDNN implementations that ran the
convolutions, peak resident memory, the hours a 50,000-image CIFAR-10 epoch takes at that
speed, and the time from starting a process to evaluate saved weights to its first number
(cache filled). bf16 is measured only on a CPU with bf16 units (AMX or AVX512-BF16).
``--threads N`` runs on N threads (OMP_NUM_THREADS and OPENBLAS_NUM_THREADS) instead of
all cores.
"""
import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import machine  # noqa: E402  (benchmarks/, next to this file)


def conv_flops(model, n):
    """Multiply-add FLOPs (x2) of every convolution of one forward pass on ``n`` images,
    counting the pad channel as the original's materialised input channel does."""
    def flops(conv, height, width):
        cin = conv.n_in + int(conv.has_pad_channel)
        cout = conv.n_out * conv.upsample ** 2
        kh, kw = conv.kernel_shape
        return 2 * n * cout * cin * kh * kw * (height // conv.downsample) * (width // conv.downsample)

    _, height, width = model.shape_x
    total = flops(model.x_enc, height, width) + flops(model.x_dec, height // 2, width // 2)
    size = model.config.level_size(0)
    for (i, _), layer in model.vae_layers.items():
        size_in, size = size, model.config.level_size(i)
        for conv in layer.convs + layer.masked_convs:
            # A downsampling layer's strided convs read the level above.
            at = size_in if conv.downsample > 1 else size
            total += flops(conv, *at)
    return total


# Seconds for a thread pool to go idle: OpenBLAS's threads (the GEMM's) and OpenMP's (the
# step's) keep spinning for a while after their work, so timed back to back each slows the
# other (the training loop runs steps back to back, with no GEMM between).
QUIET_S = 0.25


def quiet_rate(work, flop):
    """A function that runs ``work()`` between two pauses of QUIET_S and returns its
    GFLOP/s for ``flop`` floating-point operations."""
    def rate():
        time.sleep(QUIET_S)
        t0 = time.time()
        work()
        seconds = time.time() - t0
        time.sleep(QUIET_S)
        return flop / seconds / 1e9
    return rate


def gemm_speed_meter(size=2048):
    """A function that times one float32 (size x size) GEMM through Theano's BLAS, all
    threads, and returns its GFLOP/s: the machine's matrix-unit peak at that moment. It is
    measured between the training steps, so that on a machine whose speed drifts (turbo,
    neighbours) the step and its peak are timed under the same conditions, with a pause
    on either side so that neither is timed while the other's threads still spin."""
    import numpy as np

    from layers.runtime.backend import T, theano

    a, b = T.matrix(), T.matrix()
    gemm = theano.function([a, b], T.dot(a, b))
    m = np.random.rand(size, size).astype(np.float32)
    gemm(m, m)
    return quiet_rate(lambda: gemm(m, m), 2 * size ** 3)


def fma_speed_meter(seconds=0.3):
    """A function that returns the fp32 FMA peak of all cores at that moment, in GFLOP/s:
    benchmarks/fma_chains.c (register-only FMA chains on every OpenMP thread, AVX-512 where
    the processor has it, else AVX2), built here with the system's C compiler."""
    flags = ["-mavx512f"] if machine.vector_isa() == "avx512" else ["-mavx2"]
    library = os.path.join(tempfile.mkdtemp(), "fma_chains.so")
    subprocess.run(["cc", "-O3", "-fopenmp", "-mfma", *flags, "-shared", "-fPIC", "-o", library,
                    str(ROOT / "benchmarks" / "fma_chains.c")], check=True)
    chains = ctypes.CDLL(library)
    chains.fma_run.argtypes = [ctypes.c_long]
    chains.fma_run.restype = ctypes.c_float
    flop_per_round = 2 * chains.fma_lanes() * chains.fma_chains() * chains.fma_threads()
    t0 = time.time()
    chains.fma_run(10 ** 6)
    rounds = int(seconds * 10 ** 6 / max(time.time() - t0, 1e-6))
    return quiet_rate(lambda: chains.fma_run(rounds), flop_per_round * rounds)


def bf16_speed_meter(size=2048):
    """A function that returns the bf16 matrix peak of all cores at that moment, in
    GFLOP/s (a size^3 oneDNN matmul of bf16 matrices, fp32 result, benchmarks/bf16_matmul.c,
    built here against the oneDNN wheel), and oneDNN's implementation of it."""
    from layers.ops import onednn

    library = os.path.join(tempfile.mkdtemp(), "bf16_matmul.so")
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", f"-I{onednn.include_dir()}",
                    f"-L{onednn.library_dir()}", f"-Wl,-rpath,{onednn.library_dir()}", "-o",
                    library, str(ROOT / "benchmarks" / "bf16_matmul.c"), "-ldnnl"], check=True)
    product = ctypes.CDLL(library)
    product.bf16_matmul_implementation.restype = ctypes.c_char_p
    if product.bf16_matmul_make(ctypes.c_long(size)) or product.bf16_matmul_run(2):
        raise SystemExit("oneDNN could not run a bf16 matmul on this CPU")
    t0 = time.time()
    product.bf16_matmul_run(1)
    times = max(1, int(0.3 / max(time.time() - t0, 1e-6)))
    return (quiet_rate(lambda: product.bf16_matmul_run(times), 2 * size ** 3 * times),
            product.bf16_matmul_implementation().decode())


def measure(name, precision, n_steps, n_batch, started, weights_path=None):
    """Runs in a child process started at time ``started``: build, compile, time; prints
    one JSON line. Saves the weights to ``weights_path`` if given."""
    import numpy as np

    from layers.ops import onednn
    from models.run.settings import RunConfig
    from models.run.start import build_trainer
    from models.run.step import TrainingStep
    from models.run.weights import save_ndict
    from train import processes, resolved_config

    model = build_trainer(RunConfig.from_options(
        resolved_config(name, seed=0, conv_precision=precision)))
    train_step = TrainingStep(model, processes)  # the training loop's step, as it runs it
    x = np.random.RandomState(0).randint(0, 256, (n_batch, 3, 32, 32)).astype(np.uint8)
    images = range(n_batch)
    t0 = time.time()
    model.data_init(x, model.noise("init", 0, images))
    init_s = time.time() - t0
    t0 = time.time()
    train_step(x, model.noise("train", 0, images))
    first_step_s = time.time() - t0  # compile + one step
    start_to_first_step_s = time.time() - started
    gemm_rate, fma_rate = gemm_speed_meter(), fma_speed_meter()
    bf16_rate, bf16_implementation = bf16_speed_meter() if has_bf16() else (lambda: 0.0, "")
    times, peaks, fma_peaks, bf16_peaks = [], [], [], []
    for step in range(n_steps):  # as the training loop: the step's noise, then the step
        t0 = time.time()
        train_step(x, model.noise("train", step, images))
        times.append(time.time() - t0)
        peaks.append(gemm_rate())  # the machine's peaks right after this step
        fma_peaks.append(fma_rate())
        bf16_peaks.append(bf16_rate())
    model.evaluate(x, model.noise("eval", 0, images))  # compile
    eval_times = []
    for step in range(max(3, n_steps // 2)):
        t0 = time.time()
        model.evaluate(x, model.noise("eval", step, images))
        eval_times.append(time.time() - t0)
    peak, fma_peak = float(np.median(peaks)), float(np.median(fma_peaks))
    bf16_peak = float(np.median(bf16_peaks))
    step = float(np.median(times))
    fwd = conv_flops(model.model, n_batch)
    if weights_path:
        save_ndict(model.state.weights(), weights_path)
    return {"config": name, "precision": precision, "n_batch": n_batch,
        "n_params": model.state.params.size, "isa": onednn.cpu_isa()[0],
        "conv_implementations": onednn.implementations().get(precision, ""),
        "data_init_s": init_s, "compile_and_first_step_s": first_step_s,
        "start_to_first_step_s": start_to_first_step_s,
        "step_s": step, "eval_s": float(np.median(eval_times)),
        "images_per_s": n_batch / step, "train_gflop": 3 * fwd / 1e9,
        "gflops": 3 * fwd / step / 1e9, "gemm_peak_gflops": peak,
        "fraction_of_peak": 3 * fwd / step / 1e9 / peak, "fma_peak_gflops": fma_peak,
        "fraction_of_fma_peak": 3 * fwd / step / 1e9 / fma_peak,
        "bf16_peak_gflops": bf16_peak, "bf16_matmul_implementation": bf16_implementation,
        "fraction_of_bf16_peak": 3 * fwd / step / 1e9 / bf16_peak if bf16_peak else None,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def has_bf16():
    """Whether oneDNN finds bf16 units (AMX or AVX512-BF16) on this CPU."""
    from layers.ops import onednn
    return onednn.has_bf16()


def evaluate_first_minibatch(name, precision, n_batch, weights_path):
    """Runs in a child process: what `train.py evaluate` does up to its first number."""
    import numpy as np

    from models.run.settings import RunConfig
    from models.run.start import build_trainer
    from models.run.weights import load_ndict
    from train import resolved_config

    cfg = RunConfig.from_options(resolved_config(name, seed=0, conv_precision=precision))
    model = build_trainer(cfg, draw_weights=False)
    model.state.set_weights(load_ndict(weights_path))
    x = np.random.RandomState(1).randint(0, 256, (n_batch, 3, 32, 32)).astype(np.uint8)
    return {"cost": float(model.evaluate(x, model.noise("eval", 0, range(n_batch)))["cost"].mean())}


def child(args, compiledir, threads, cache):
    flags = f"base_compiledir={compiledir}"
    env = {**os.environ, "THEANO_FLAGS": ",".join(filter(None, [os.environ.get(
        "THEANO_FLAGS"), flags])), "IAF_FUNCTION_CACHE": str(int(cache))}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", "--started", str(t0)] + args,
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]), wall_s=time.time() - t0)


def _share(row, peak):
    fraction = row[f"fraction_of_{peak}"]
    return f"{fraction:.2f} (of {row[f'{peak}_gflops']:.0f})" if fraction else "-"


def table(rows):
    head = ("| config | precision | threads | params | cold compile+1st step (s) | "
            "warm start to 1st step (s) | cached start to 1st step (s) | "
            "evaluate to 1st number (s) | s/step | s/eval batch | images/s | GFLOP/s | "
            "share of FMA peak | share of bf16 peak | share of GEMM peak | peak RSS (GB) | "
            "h/epoch |")
    lines = [f"Measured on {machine.description()}; oneDNN runs on {rows[0]['isa']}.", "",
             head, "|" + "---|" * 17]
    for r in rows:
        lines.append(f"| {r['config']} (batch {r['n_batch']}) | {r['precision']} | "
                     f"{r['threads']} | {r['n_params'] / 1e6:.1f}M | "
                     f"{r['cold_compile_s']:.0f} | {r['warm_start_s']:.1f} | "
                     f"{r['cached_start_s']:.1f} | {r['evaluate_s']:.1f} | {r['step_s']:.3f} | "
                     f"{r['eval_s']:.3f} | {r['images_per_s']:.1f} | {r['gflops']:.0f} | "
                     f"{_share(r, 'fma_peak')} | {_share(r, 'bf16_peak')} | "
                     f"{r['fraction_of_peak']:.2f} (of {r['gemm_peak_gflops']:.0f}) | "
                     f"{r['peak_rss_gb']:.2f} | {50000 / r['images_per_s'] / 3600:.1f} |")
    lines += ["", "oneDNN's implementations, by config and precision:", ""]
    lines += [f"- {r['config']}, {r['precision']}: {r['conv_implementations']}" for r in rows]
    if any(r["bf16_matmul_implementation"] for r in rows):
        lines.append(f"- the bf16 peak's matmul: {rows[0]['bf16_matmul_implementation']}")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*", default=["readme_example", "table3"])
    parser.add_argument("--precision", choices=["fp32", "bf16"],
                        help="measure one precision (default: both, bf16 where the CPU has it)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="default: all cores")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.evaluate:
        print(json.dumps(evaluate_first_minibatch(args.configs[0], args.precision, args.batch,
                                                  args.weights)))
        return
    if args.child:
        print(json.dumps(measure(args.configs[0], args.precision, args.steps, args.batch,
                                 args.started, args.weights)))
        return
    precisions = [args.precision] if args.precision else ["fp32"] + ["bf16"] * has_bf16()
    rows = []
    for name in args.configs:
        for precision in precisions:
            options = [name, "--batch", str(args.batch), "--precision", precision]
            with tempfile.TemporaryDirectory() as compiledir:
                def run(steps, cache, *extra):
                    return child(options + ["--steps", str(steps)] + list(extra), compiledir,
                                 args.threads, cache)
                weights = os.path.join(compiledir, "weights.ndict.tar.gz")
                cold = run(1, False)
                row = run(args.steps, False)
                run(1, True, "--weights", weights)  # fills the function cache
                cached = run(1, True)
                evaluate = run(0, True, "--evaluate", "--weights", weights)
            row["cold_compile_s"] = cold["data_init_s"] + cold["compile_and_first_step_s"]
            row["warm_start_s"] = row["start_to_first_step_s"]
            row["cached_start_s"] = cached["start_to_first_step_s"]
            row["evaluate_s"] = evaluate["wall_s"]
            row["threads"] = args.threads or os.cpu_count()
            rows.append(row)
            print(table([row]), flush=True)
    out = ROOT / "benchmarks"
    suffix = f"_{args.threads}threads" if args.threads else ""
    rows = merged_rows(out / f"results{suffix}.json", rows)
    (out / f"results{suffix}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / f"results{suffix}.md").write_text(table(rows))
    print(table(rows))


def merged_rows(path, rows):
    """The rows saved in ``path`` with those of the same config, batch and precision
    replaced by ``rows`` (each row holds the peaks measured with it), in a fixed order."""
    key = lambda row: (row["config"], row["n_batch"], row["precision"])  # noqa: E731
    saved = json.loads(path.read_text()) if path.exists() else []
    rows = {key(row): row for row in saved + rows}.values()
    return sorted(rows, key=lambda row: (row["config"] != "readme_example", row["config"],
                                         row["n_batch"], row["precision"] != "fp32"))


if __name__ == "__main__":
    main()
