"""Evaluation of a set of images, spread over the run's processes (docs/model.md §11)."""
import numpy as np


def minibatches(n_images, n_batch):
    """``(start, stop)`` of each minibatch of ``n_batch`` images, in order."""
    return [(start, min(start + n_batch, n_images)) for start in range(0, n_images, n_batch)]


def my_minibatches(trainer, x, n_batch, purpose, processes, sample=0):
    """``(images, noise)`` of this rank's share of the minibatches of ``x``. An image's
    noise is keyed by its index in ``x`` (and by ``sample``, for several draws), so the
    same weights give the same numbers for any ``n_batch`` and any number of ranks."""
    batches = minibatches(len(x), n_batch)
    for b in processes.share(range(len(batches))):
        start, stop = batches[b]
        yield x[start:stop], trainer.noise(purpose, sample, range(start, stop))


def evaluate_images(trainer, x, n_batch, processes, purpose="eval", sample=0):
    """Every evaluation output for every image of ``x``, in image order, on every rank."""
    mine = [trainer.evaluate(*batch) for batch in
            my_minibatches(trainer, x, n_batch, purpose, processes, sample)]
    results = [r for share in processes.gather(mine) for r in share]
    return {key: np.concatenate([r[key] for r in results]) for key in results[0]}


def evaluate_set(trainer, x, n_batch, processes):
    """Mean of every evaluation output over the images of ``x`` (in float64, image order)."""
    return {key: float(values.astype(np.float64).mean())
            for key, values in evaluate_images(trainer, x, n_batch, processes).items()}
