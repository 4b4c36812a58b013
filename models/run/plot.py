"""Learning-curve figure: bits/dim and per-layer KL per epoch, drawn with matplotlib's Agg backend.

Only `Figure` + `FigureCanvasAgg` are used (never pyplot), so no display is needed and no
global matplotlib state changes.
"""
import gc

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from layers.runtime.files import atomic_write

FIGSIZE, DPI = (8, 7), 100  # an 800x700 pixel PNG
MAX_MARKERS = 30  # series with more points are drawn as plain lines
FLOOR_COLOUR = "C3"  # red, kept for the free-bits floor: layers never use it
FEW_LAYER_COLOURS = ["C0", "C1", "C2", "C4", "C5", "C6", "C7", "C8", "C9"]


def _finite(points):
    """(epochs, values) float arrays of the [epoch, value] pairs in which both are finite."""
    pairs = np.array(points, float).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    return pairs[:, 0], pairs[:, 1]


def _plot(ax, x, y, **style):
    """Plot one series, with markers when it has few points (a single point stays visible)."""
    ax.plot(x, y, marker="o" if len(x) <= MAX_MARKERS else None, markersize=3, **style)


def _draw_costs(ax, history):
    """Top panel: train and test bits/dim per epoch."""
    for name in ("train", "test"):
        x, y = _finite(history.get(name, []))
        if len(x):
            _plot(ax, x, y, label=name)
    ax.set(title="train and test cost", xlabel="epoch", ylabel="bits/dim")
    ax.grid(True, alpha=0.4)
    if ax.lines:
        ax.legend()


def _draw_kl(ax, kl_history, kl_floor):
    """Bottom panel: KL of each latent layer per epoch, and the free-bits floor if given."""
    points = {}
    for epoch, per_layer in kl_history:
        for name, value in per_layer.items():
            points.setdefault(name, []).append([epoch, value])
    series = {name: _finite(p) for name, p in points.items()}
    series = {name: (x, y) for name, (x, y) in series.items() if len(x)}
    ax.set(title="KL per latent layer", xlabel="epoch", ylabel="KL (nats per image)")
    if not series:
        ax.text(0.5, 0.5, "no KL data yet", ha="center", va="center", transform=ax.transAxes)
        return
    many = len(series) > len(FEW_LAYER_COLOURS)
    colours = colormaps["viridis"](np.linspace(0, 1, len(series))) if many else FEW_LAYER_COLOURS
    for (name, (x, y)), colour in zip(series.items(), colours):
        _plot(ax, x, y, label=str(name), color=colour, linewidth=1)
    floor = [] if kl_floor is None else [kl_floor]
    if np.concatenate([y for _, y in series.values()] + [floor]).min() > 0:
        ax.set_yscale("log")
    if kl_floor is not None:
        ax.axhline(kl_floor, color=FLOOR_COLOUR, linestyle="--", linewidth=1.5, zorder=3,
                   label="free-bits floor")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(ncol=min(4, 1 + len(series) // 8), fontsize="x-small" if many else "small")


def save_learning_curve(path, history, kl_floor=None):
    """Write the learning-curve PNG for `history` to `path`, atomically.

    `history` is {"train": [[epoch, bits/dim], ...], "test": [...], "kl": [[epoch,
    {layer: KL nats per image}], ...]}; any list may be empty and "kl" may be absent.
    Non-finite points are skipped. `kl_floor` (nats per image) is one layer's free-bits
    floor, drawn as a dashed line so that layers sitting at it stand out.
    """
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1)
    _draw_costs(top, history)
    _draw_kl(bottom, history.get("kl", []), kl_floor)
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=DPI))
    # A figure is a web of reference cycles that holds its pixel buffer (megabytes). Next
    # to a model's millions of long-lived Theano objects, Python's cycle collector rarely
    # looks at the oldest generation, so a long run would keep every report's figure:
    # collect it now.
    del figure, top, bottom
    gc.collect()
