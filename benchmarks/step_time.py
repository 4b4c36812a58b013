"""Time one config's training step: compile time, seconds per step, peak memory.

    python benchmarks/step_time.py table3 [n_steps]
    python benchmarks/step_time.py readme_example

Prints one JSON line. Compile time is "cold" only with an empty Theano compile directory.
"""
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import NAMED_CONFIGS  # noqa: E402
from models import ResNetVAE  # noqa: E402


def model_args(named):
    top = {"n_h": 160, "n_z": 32, "depths": [2, 2], **named}
    return dict(n_h1=top["n_h"], n_h2=top["n_h"], n_z=top["n_z"], depths=top["depths"],
                **named.get("margs", {}))


def main(name, n_steps=5, n_batch=16):
    model = ResNetVAE(**model_args(NAMED_CONFIGS[name]))
    x = np.random.RandomState(0).randint(0, 256, (n_batch, 3, 32, 32)).astype(np.uint8)
    t0 = time.time()
    model.data_init(x)
    t_init = time.time() - t0
    t0 = time.time()
    model.train_step(x)
    t_first = time.time() - t0
    times = []
    for _ in range(n_steps):
        t0 = time.time()
        model.train_step(x)
        times.append(time.time() - t0)
    print(json.dumps({"config": name, "n_batch": n_batch, "data_init_s": round(t_init, 1),
                      "compile_and_first_step_s": round(t_first, 1),
                      "step_s_median": round(float(np.median(times)), 3),
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                           / 2**20, 2)}))


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
