"""Looking inside a trained model: its test bits/dim and what each latent layer carries,
the importance-sampled likelihood, samples from the prior and reconstructions."""
import json
import os

import numpy as np

from layers.runtime.files import atomic_write
from models.names import layer_key

from .evaluation import evaluate_images, evaluate_set, my_minibatches
from .pictures import save_image_grid


def latent_layers(trainer, x, n_batch, elbo, processes):
    """Per latent layer on images ``x`` (docs/model.md §8): KL in nats per image, its bits
    per dim and share of the -ELBO, the feature maps whose KL is below the free-bits floor,
    and the active units: those whose posterior mean (of q's Gaussian) varies over the
    images with variance above 0.01 (Burda et al. 2015)."""
    model = trainer.model
    shapes = model.latent_shapes()
    sizes = [2 * int(np.prod(s)) + s[0] for s in shapes]  # mean, mean^2, KL per map
    totals = np.zeros(sum(sizes))
    for batch in my_minibatches(trainer, x, n_batch, "eval", processes):
        layers = trainer.latents(*batch)
        totals += np.concatenate([part.sum(axis=0) for mean, kl in layers for part in
                                  (mean.astype(np.float64), mean.astype(np.float64) ** 2, kl)])
    processes.sum_(totals)
    report, bits = {}, model.bits_per_nat
    for (i, j), (n_z, height, width), part in zip(model.vae_layers, shapes,
                                                   np.split(totals / len(x), np.cumsum(sizes))):
        units = n_z * height * width
        mean, square, kl_maps = np.split(part, [units, 2 * units])
        kl = float(kl_maps.sum())
        report[layer_key(i, j)] = {
            "kl_nats": kl, "bits_per_dim": kl * bits, "share_of_elbo": kl * bits / elbo,
            "floored_maps": int((kl_maps < model.config.kl_min).sum()), "maps": n_z,
            "active_units": int((square - mean ** 2 > 0.01).sum()), "units": units}
    return report


def print_layers(report):
    print(f"{'layer':8}{'KL (nats/image)':>17}{'bits/dim':>10}{'share of -ELBO':>16}"
          f"{'maps below floor':>18}{'active units':>16}")
    for name, r in report.items():
        print(f"{name:8}{r['kl_nats']:17.3f}{r['bits_per_dim']:10.4f}"
              f"{100 * r['share_of_elbo']:15.1f}%{r['floored_maps']:>13d}/{r['maps']:<4d}"
              f"{r['active_units']:>10d}/{r['units']:<5d}")


def estimate_marglik(trainer, x, n_batch, n_samples, processes):
    """Importance-sampled ``-log p(x)`` in bits/dim: log-mean-exp over K posterior samples
    of ``log p(x|z) + log p(z) - log q(z|x)`` per image (free bits never enter it)."""
    log_sum = -np.inf  # per image, log of the sum of the importance weights so far
    for k in range(n_samples):
        log_w = evaluate_images(trainer, x, n_batch, processes, "marglik", k)["log_weight"]
        log_sum = np.logaddexp(log_sum, log_w.astype(np.float64))
        bits = -(log_sum - np.log(k + 1)).mean() * trainer.model.bits_per_nat
        print(f"Estimate of -log p(x) after {k + 1} samples: {bits:.5f} bits/dim")
    return bits


def evaluate_model(trainer, images, n_batch, est_marglik, processes):
    """Bits/dim of the model on ``images``, what each latent layer carries and, with
    ``est_marglik=K``, the importance-sampled -log p(x); the last line printed is JSON
    for scripts."""
    results = evaluate_set(trainer, images, n_batch, processes)
    summary = {"cost": results["cost"], "elbo": results["elbo"], "n_images": len(images)}
    print(f"cost (the original's bits/dim, free bits applied): {results['cost']:.5f}")
    print(f"-ELBO (bits/dim): {results['elbo']:.5f}")
    summary["layers"] = latent_layers(trainer, images, n_batch, results["elbo"], processes)
    print_layers(summary["layers"])
    if est_marglik > 0:
        summary["marglik"] = estimate_marglik(trainer, images, n_batch, est_marglik, processes)
        summary["est_marglik"] = est_marglik
    print(json.dumps(summary))
    return summary


def samples(trainer, n_samples, temperature):
    """``n_samples`` uint8 images from the prior, its noise scaled by ``temperature``."""
    noise = trainer.noise("sample", 0, range(n_samples))
    return trainer.decode([temperature * e for e in noise])


def reconstructions(trainer, x, temperature):
    """The images ``x``, then one row per latent layer: row k decodes them with z of the
    top k layers from the posterior and the layers below from the prior at
    ``temperature``."""
    n_layers, images = len(trainer.model.vae_layers), range(len(x))
    eps = trainer.noise("eval", 0, images)
    prior_eps = [temperature * e for e in trainer.noise("sample", 0, images)]
    rows = [x] + [trainer.reconstruct(x, eps, prior_eps,
                                      [k >= n_layers - top for k in range(n_layers)])
                  for top in range(1, n_layers + 1)]
    return np.concatenate(rows)


def save_images(folder, name, images, n_cols):
    """``name``.png (a grid) and ``name``.npy (the uint8 images) in ``folder``."""
    save_image_grid(os.path.join(folder, name + ".png"), images, n_cols)
    atomic_write(os.path.join(folder, name + ".npy"), lambda f: np.save(f, images))
    print(f"Wrote {name}.png and {name}.npy to {folder}")
