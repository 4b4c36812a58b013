"""Tests for data.plot: learning-curve PNGs drawn with numpy only."""
import os

import numpy as np
import pytest

from data.plot import (
    HEIGHT, INK, TEST_COLOUR, TRAIN_COLOUR, WIDTH, _nice_ticks, _text_mask, plot_learning_curves,
    render_learning_curves,
)
from data.png import SIGNATURE, read_png

BELOW_LEGEND = 120  # the legend sits in the top-right corner, above this row
EPOCHS = np.arange(1, 21)
TRAIN = 4.0 - 0.05 * EPOCHS
TEST = 4.1 - 0.04 * EPOCHS


def pixels_of(image, colour):
    """Boolean HxW mask of the pixels exactly equal to `colour`."""
    return np.all(image == np.array(colour, np.uint8), axis=-1)


def test_plot_writes_a_valid_png_of_the_rendered_image(tmp_path):
    path = tmp_path / "curves.png"
    plot_learning_curves(str(path), EPOCHS, TRAIN, EPOCHS, TEST)
    assert path.read_bytes().startswith(SIGNATURE)
    image = read_png(str(path))
    assert image.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(image, render_learning_curves(EPOCHS, TRAIN, EPOCHS, TEST))
    assert os.listdir(tmp_path) == ["curves.png"]


def test_both_curve_colours_are_drawn_and_an_empty_series_is_not():
    image = render_learning_curves(EPOCHS, TRAIN, EPOCHS, TEST)
    assert pixels_of(image[BELOW_LEGEND:], TRAIN_COLOUR).sum() > 100
    assert pixels_of(image[BELOW_LEGEND:], TEST_COLOUR).sum() > 100
    train_only = render_learning_curves(EPOCHS, TRAIN, [], [])
    assert pixels_of(train_only, TRAIN_COLOUR).any()
    assert not pixels_of(train_only, TEST_COLOUR).any()


def test_rendering_is_deterministic_and_depends_on_the_values():
    image = render_learning_curves(EPOCHS, TRAIN, EPOCHS, TEST)
    np.testing.assert_array_equal(image, render_learning_curves(EPOCHS, TRAIN, EPOCHS, TEST))
    changed = TEST.copy()
    changed[10] += 0.3
    other = render_learning_curves(EPOCHS, TRAIN, EPOCHS, changed)
    assert not np.array_equal(image, other)
    assert pixels_of(other, TEST_COLOUR).sum() != pixels_of(image, TEST_COLOUR).sum()


def test_decreasing_curve_is_drawn_higher_on_the_left():
    image = render_learning_curves(EPOCHS, TRAIN, [], [])
    rows, cols = np.nonzero(pixels_of(image, TRAIN_COLOUR))
    left, right = cols < WIDTH // 2, cols >= WIDTH // 2
    assert left.sum() > 50 and right.sum() > 50
    assert rows[left].mean() + 50 < rows[right].mean()


def test_non_finite_points_are_skipped():
    bad = TRAIN.copy()
    bad[3], bad[7] = np.nan, np.inf
    keep = np.isfinite(bad)
    np.testing.assert_array_equal(
        render_learning_curves(EPOCHS, bad, EPOCHS, TEST),
        render_learning_curves(EPOCHS[keep], TRAIN[keep], EPOCHS, TEST),
    )
    np.testing.assert_array_equal(
        render_learning_curves(EPOCHS, TRAIN, [1.0, 2.0], [np.nan, -np.inf]),
        render_learning_curves(EPOCHS, TRAIN, [], []),
    )


def test_single_point_draws_one_marker():
    image = render_learning_curves([5], [3.52], [], [])
    rows, cols = np.nonzero(pixels_of(image[BELOW_LEGEND:], TRAIN_COLOUR))
    assert len(rows) == 25
    assert np.ptp(rows) == 4 and np.ptp(cols) == 4


def test_flat_series_with_hundreds_of_epochs_is_a_thin_horizontal_line():
    image = render_learning_curves(np.arange(300), np.full(300, 3.0), [], [])
    rows, cols = np.nonzero(pixels_of(image[BELOW_LEGEND:], TRAIN_COLOUR))
    assert np.ptp(rows) == 1  # 2 px thick, no markers
    assert np.ptp(cols) > WIDTH * 0.8


def test_labels_are_drawn_as_text():
    image = render_learning_curves(EPOCHS, TRAIN, EPOCHS, TEST)
    ink = pixels_of(image, INK)
    assert ink[40:HEIGHT - 50, :30].sum() > 100  # y tick labels left of the axis
    assert ink[HEIGHT - 40:, 200:500].sum() > 100  # x tick labels and "epoch" under the axis
    assert ink[:30].sum() > 50  # the title
    retitled = render_learning_curves(EPOCHS, TRAIN, EPOCHS, TEST, title="nats")
    differs = np.any(retitled != image, axis=-1)
    assert differs[:30].any() and not differs[30:].any()


def test_text_mask_has_one_glyph_per_character():
    mask = _text_mask("train")
    assert mask.shape == (14, (5 * 6 - 1) * 2)  # 5x7 glyphs, 1 px gaps, scaled 2x
    assert mask.any(axis=0).reshape(-1, 2).any(axis=1).sum() > 20
    assert not _text_mask("#").any()  # no glyph: drawn as a space


@pytest.mark.parametrize("low, high", [(3.02, 3.41), (0.0, 1.0), (-7.3, 250.0), (1e-4, 3e-4), (3.344, 3.696)])
def test_ticks_are_four_to_six_evenly_spaced_values_in_range(low, high):
    ticks, decimals = _nice_ticks(low, high)
    assert 4 <= len(ticks) <= 6
    slack = 1e-9 * (high - low)
    assert low - slack <= ticks[0] and ticks[-1] <= high + slack
    np.testing.assert_allclose(np.diff(ticks), ticks[1] - ticks[0])
    assert len({f"{t:.{decimals}f}" for t in ticks}) == len(ticks)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="3 epochs but 2 costs"):
        render_learning_curves([1, 2, 3], [1.0, 2.0], [], [])
