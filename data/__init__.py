"""Datasets for the IAF-VAE experiments: CIFAR-10 (`cifar10`) and a procedurally generated
toy set (`toy`). `load_dataset` returns uint8 image arrays of shape (N, 3, 32, 32) (NCHW).

May import: numpy and the standard library; nothing else of this project.
"""
import numbers

import numpy as np

from data.cifar10 import load_cifar10
from data.errors import DataError
from data.toy import load_toy

__all__ = ["DataError", "load_dataset", "PROBLEMS"]

PROBLEMS = {"cifar10": load_cifar10, "toy": load_toy}


def load_dataset(problem, n_train=0, seed=0):
    """Load `problem` and return `(train_x, test_x)`, uint8 arrays of shape (N, 3, 32, 32).

    Both sets are shuffled once with `np.random.RandomState(seed)` (the training
    set's permutation is drawn first, then the test set's). If `n_train > 0`, the
    training AND the test set are each truncated to their first `n_train` rows
    after shuffling, as in the original code.
    """
    if problem not in PROBLEMS:
        valid = ", ".join(repr(name) for name in PROBLEMS)
        raise DataError(f"unknown problem {problem!r}; choose one of {valid}.")
    if not isinstance(n_train, numbers.Integral) or n_train < 0:
        raise DataError(
            f"n_train must be a non-negative integer (0 means all data), got {n_train!r}; "
            "pass n_train >= 0."
        )
    train_x, test_x = PROBLEMS[problem]()
    rng = np.random.RandomState(seed)
    train_x = train_x[rng.permutation(len(train_x))]
    test_x = test_x[rng.permutation(len(test_x))]
    if n_train > 0:
        train_x, test_x = train_x[:n_train], test_x[:n_train]
    return train_x, test_x
