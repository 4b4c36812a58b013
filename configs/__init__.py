"""Named configurations: ``python train.py with <name> [overrides...]``.

Each is a plain dict of config overrides, applied before the command line's own.

May import: nothing (plain data).
"""
# The command of the original README's "Results of Table 3" (3.28 bits/dim on CIFAR-10).
TABLE3 = {"problem": "cifar10", "n_h": 160, "depths": [10, 10],
          "margs": {"depth_ar": 2, "posterior": "down_iaf2_nl", "prior": "diag", "kl_min": 0.25}}

# The original README's syntax example.
README_EXAMPLE = {"problem": "cifar10", "n_z": 32, "n_h": 64, "depths": [2, 2, 2],
                  "margs": {"depth_ar": 1, "posterior": "down_iaf2_nl", "kl_min": 0.25}}

# The whole pipeline in a short run, no download: a small IAF model on the procedural
# toy images; bits/dim falls and sample grids appear.
QUICKSTART = {"problem": "toy", "n_z": 8, "n_h": 32, "depths": [1, 1], "n_epochs": 6,
              "n_train": 1024, "n_batch": 32,
              "margs": {"depth_ar": 1, "posterior": "down_iaf2_nl", "kl_min": 0.25}}

NAMED_CONFIGS = {"table3": TABLE3, "readme_example": README_EXAMPLE, "quickstart": QUICKSTART}
