"""Random draws as functions of where they are used (docs/model.md §9).

A draw is determined by the run's seed, its purpose and its place (a step, an image's
position, an epoch), never by what was drawn before it. So an interrupted and resumed
run, or one spread over several processes, sees the same numbers as one process
running straight through.
"""
import numpy as np

# Each purpose's number in the generator's seed. These numbers never change: a new purpose
# gets a new number, so that every existing draw stays what it was.
PURPOSES = {"train": 0, "eval": 1, "init": 2, "marglik": 3, "order": 4, "sample": 5,
            "sample_fixed": 6}


def generator(seed, purpose, *place):
    """A numpy Generator that depends only on ``(seed, purpose, *place)`` (integers >= 0)."""
    entropy = [int(seed), PURPOSES[purpose], *(int(p) for p in place)]
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(entropy)))


def image_noise(shapes, seed, purpose, step, positions):
    """Standard-normal float32 noise for the images at ``positions`` (their places, e.g.
    the index in the epoch's order or in the evaluated set) at ``step`` (e.g. the epoch or
    the sample index; docs/model.md §9).

    Returns one array ``(len(positions), *shape)`` per entry of ``shapes``; an image's
    noise, all shapes together, comes from ``generator(seed, purpose, step, position)``.
    """
    sizes = [int(np.prod(s)) for s in shapes]
    flat = np.empty((len(positions), sum(sizes)), np.float32)
    for row, position in zip(flat, positions):
        generator(seed, purpose, step, position).standard_normal(dtype=np.float32, out=row)
    offsets = np.cumsum([0] + sizes)
    return [np.ascontiguousarray(flat[:, a:b]).reshape((len(positions),) + tuple(s))
            for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]


def permutation(seed, epoch, n):
    """The minibatch order of ``epoch``: a permutation of ``range(n)``."""
    return generator(seed, "order", epoch).permutation(n)
