"""One run over threads and processes: measured on this machine, projected to K machines.

    python benchmarks/scaling.py                 # Table 3; writes benchmarks/scaling.{md,json}
    python benchmarks/scaling.py readme_example --steps 5 --precision fp32

Measured, with the training loop's own step (each rank's gradient, one all-reduce of the
flat gradient, the same update on every rank), batch 16 per process, in each precision of
the convolutions (bf16 where the CPU has bf16 units): (a) the step of 1 process on 1 and
on 2 threads, and of 2 ranks x 1 thread (mpiexec); (b) the time of the all-reduce of the
model's whole gradient between 2 ranks. Projected: hours per CIFAR-10 epoch, days for 1000
epochs and the scaling efficiency on K machines, each running one process as fast as
(a)'s 2-thread process, with the all-reduce of a ring, 2 (K-1)/K x gradient bytes over
the network's bandwidth. Needs the [mpi] extra (mpiexec).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import machine  # noqa: E402  (benchmarks/, next to this file)
MACHINES = (1, 2, 4, 8, 16, 32, 64)
GBIT_PER_S = (10, 25)
EPOCH_IMAGES = 50000


def measure(name, precision, n_steps, n_batch):
    """In each process: the mean time of a training step and of the all-reduce alone."""
    import numpy as np

    import train
    from models.run.settings import RunConfig
    from models.run.start import build_trainer, get_data, initialise
    from models.run.step import TrainingStep

    # One seed: the same data on every rank.
    cfg = RunConfig.from_options(train.resolved_config(name, problem="toy", n_batch=n_batch, seed=0,
                                           conv_precision=precision))
    processes = train.processes
    train_x, _ = get_data(cfg, processes)
    trainer = build_trainer(cfg)
    initialise(trainer, cfg, processes, train_x[:n_batch])
    global_batch = n_batch * processes.size

    train_step = TrainingStep(trainer, processes)

    def step(k):
        """The training loop's step on the k-th global minibatch."""
        mine = processes.share(np.arange(k * global_batch, (k + 1) * global_batch) % len(train_x))
        train_step(train_x[mine], trainer.noise("train", 0, mine))
    step(0)  # compiles, or loads the cached functions
    t0 = time.time()
    for k in range(1, n_steps + 1):
        step(k)
    step_s = (time.time() - t0) / n_steps
    flat = train_step.vector.array
    t0 = time.time()
    for _ in range(n_steps):
        processes.sum_(flat)
    return {"config": name, "precision": precision, "processes": processes.size,
            "n_batch": n_batch,
            "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())),
            "step_s": step_s, "images_per_s": global_batch / step_s,
            "allreduce_s": (time.time() - t0) / n_steps, "gradient_bytes": flat.nbytes}


def child(command, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def projection(step_s, n_batch, gradient_bytes):
    """Rows of (machines, Gbit/s, s/step, h/epoch, days per 1000 epochs, efficiency)."""
    rows = []
    for gbit in GBIT_PER_S:
        for k in MACHINES:
            allreduce = 2 * (k - 1) / k * gradient_bytes / (gbit * 1e9 / 8)
            seconds = step_s + allreduce
            hours = EPOCH_IMAGES / (k * n_batch) * seconds / 3600
            rows.append((k, gbit, seconds, hours, 1000 * hours / 24, step_s / seconds))
    return rows


def report(rows):
    first = rows[0]
    lines = [f"Measured on {machine.description()}, {first['config']}, "
             f"batch {first['n_batch']} per process:", "",
             "| precision | processes x threads | s/step | images/s | speed-up over 1 thread | "
             "all-reduce of the gradient (s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        one = next(o for o in rows if o["precision"] == r["precision"] and
                   o["processes"] * o["threads"] == 1)
        allreduce = f"{r['allreduce_s']:.3f}" if r["processes"] > 1 else "-"
        lines.append(f"| {r['precision']} | {r['processes']} x {r['threads']} | "
                     f"{r['step_s']:.3f} | {r['images_per_s']:.2f} | "
                     f"{r['images_per_s'] / one['images_per_s']:.2f} | {allreduce} |")
    for single in (r for r in rows if r["processes"] == 1 and r["threads"] == 2):
        lines += ["", f"Projected on K machines like this one, {single['precision']} "
                  f"({single['step_s']:.2f} s/step each, gradient "
                  f"{single['gradient_bytes'] / 1e6:.0f} MB, ring all-reduce):", "",
                  "| machines | network | s/step | h/epoch | days for 1000 epochs | efficiency |",
                  "|---|---|---|---|---|---|"]
        for k, gbit, seconds, hours, days, efficiency in projection(
                single["step_s"], single["n_batch"], single["gradient_bytes"]):
            lines.append(f"| {k} | {gbit} Gbit/s | {seconds:.2f} | {hours:.2f} | {days:.1f} | "
                         f"{100 * efficiency:.0f}% |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", default="table3")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", choices=["fp32", "bf16"],
                        help="measure one precision (default: both, bf16 where the CPU has it)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.config, args.precision, args.steps, args.batch)
        import train
        if train.processes.is_main:
            print(json.dumps(result))
        return
    from run import has_bf16  # benchmarks/run.py
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
    rows = []
    for precision in [args.precision] if args.precision else ["fp32"] + ["bf16"] * has_bf16():
        program = [sys.executable, __file__, args.config, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--precision", precision, "--child"]
        rows += [child(program, threads=1), child(program, threads=2),
                 child([mpiexec, "-n", "2"] + program, threads=1)]
    text = report(rows)
    out = ROOT / "benchmarks"
    (out / "scaling.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "scaling.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
