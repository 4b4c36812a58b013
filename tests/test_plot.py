"""Tests for data.plot: the learning-curve PNG (bits/dim and per-layer KL), drawn with matplotlib."""
import os

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from models.run.plot import FLOOR_COLOUR, save_learning_curve

WIDTH, HEIGHT = 800, 700  # 8x7 inches at 100 dpi
MIDDLE = HEIGHT // 2  # the cost panel is above this row, the KL panel below
EPOCHS = range(1, 21)
TRAIN = [[e, 4.0 - 0.05 * e] for e in EPOCHS]
TEST = [[e, 4.1 - 0.04 * e] for e in EPOCHS]
FLOOR = 8.0
KL = [[e, {"z 1_0": max(FLOOR, 200.0 / e), "z 1_1": FLOOR, "z 2_0": 50.0 + e}] for e in EPOCHS]
HISTORY = {"train": TRAIN, "test": TEST, "kl": KL}


def render(tmp_path, history, kl_floor=None, name="curve.png"):
    """Save the learning curve and return its pixels as an HxWx3 uint8 array."""
    path = tmp_path / name
    save_learning_curve(str(path), history, kl_floor=kl_floor)
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def pixels_of(image, colour):
    """Boolean HxW mask of the pixels exactly equal to a matplotlib colour."""
    rgb = np.round(255 * np.array(to_rgb(colour))).astype(np.uint8)
    return np.all(image == rgb, axis=-1)


def changed(a, b):
    """Boolean HxW mask of the pixels that differ between two images."""
    return np.any(a != b, axis=-1)


def floor_row(image):
    """Row of the floor line: the row whose floor-coloured pixels span the widest."""
    mask = pixels_of(image, FLOOR_COLOUR)
    spans = [np.ptp(np.nonzero(row)[0]) if row.any() else -1 for row in mask]
    return int(np.argmax(spans)), max(spans)


def test_writes_a_png_of_the_expected_size_and_nothing_else(tmp_path):
    image = render(tmp_path, HISTORY, FLOOR)
    assert image.shape == (HEIGHT, WIDTH, 3)
    assert os.listdir(tmp_path) == ["curve.png"]
    np.testing.assert_array_equal(render(tmp_path, HISTORY, FLOOR, "again.png"), image)


def test_changing_the_data_changes_the_matching_panel(tmp_path):
    image = render(tmp_path, HISTORY)
    test = [list(p) for p in TEST]
    test[10][1] += 0.2  # stays inside the axis range, so only the test curve moves
    diff = changed(image, render(tmp_path, {**HISTORY, "test": test}))
    assert diff[:MIDDLE].sum() > 20 and not diff[MIDDLE:].any()
    kl = [[e, dict(d)] for e, d in KL]
    kl[5][1]["z 2_0"] = 100.0
    diff = changed(image, render(tmp_path, {**HISTORY, "kl": kl}))
    assert diff[MIDDLE:].sum() > 20 and not diff[:MIDDLE].any()


def test_train_only_history_draws_one_curve(tmp_path):
    # matplotlib's default colour cycle: the first series (train) is C0, the second (test) C1
    both = render(tmp_path, {"train": TRAIN, "test": TEST})
    train_only = render(tmp_path, {"train": TRAIN, "test": []})
    assert pixels_of(train_only[:MIDDLE], "C0").sum() > 100
    assert pixels_of(both[:MIDDLE], "C1").sum() > 100
    assert not pixels_of(train_only[:MIDDLE], "C1").any()


def test_cost_panel_has_a_legend(tmp_path):
    corner = (slice(32, 100), slice(600, 780))  # top right of the cost panel, above the curves
    labelled = render(tmp_path, {"train": TRAIN, "test": TEST})
    empty = render(tmp_path, {"train": [], "test": []})
    assert (labelled[corner].max(axis=-1) < 100).sum() > 30  # the dark text "train", "test"
    assert not (empty[corner].max(axis=-1) < 100).any()


def test_a_single_point_is_visible(tmp_path):
    image = render(tmp_path, {"train": [[1, 3.5]], "test": []})
    centre = image[100:230, 300:550]  # a lone point is centred; the legend sits in a corner
    assert pixels_of(centre, "C0").sum() > 10  # a marker: a line needs two points


def test_floor_line_is_drawn_only_when_given(tmp_path):
    without = render(tmp_path, HISTORY)
    with_floor = render(tmp_path, HISTORY, FLOOR)
    assert not pixels_of(without, FLOOR_COLOUR).any()
    row, span = floor_row(with_floor)
    assert row > MIDDLE and span > WIDTH // 2  # a long horizontal line in the KL panel
    assert not pixels_of(with_floor[:MIDDLE], FLOOR_COLOUR).any()


def test_kl_axis_is_logarithmic_when_all_values_are_positive(tmp_path):
    kl = [[e, {"z 1_0": 1000.0 ** (1 - (e - 1) / 19)}] for e in EPOCHS]  # 1000 down to 1

    def floor_rows(history):
        return [floor_row(render(tmp_path, history, kl_floor))[0] for kl_floor in (1.0, 10.0, 100.0)]

    rows = floor_rows({"kl": kl})
    assert rows[0] > rows[1] > rows[2]  # a higher floor is drawn higher up
    assert abs((rows[0] - rows[1]) - (rows[1] - rows[2])) <= 2  # equal steps per decade
    kl[-1][1]["z 1_0"] = 0.0  # a zero KL cannot be shown on a log axis
    rows = floor_rows({"kl": kl})
    assert rows[1] - rows[2] > 5 * (rows[0] - rows[1])  # linear: 90 vs 9 units


@pytest.mark.parametrize("history", [{"train": TRAIN, "test": TEST, "kl": []}, {"train": TRAIN, "test": TEST}])
def test_without_kl_data_the_panel_says_so(tmp_path, history):
    image = render(tmp_path, history, kl_floor=FLOOR)
    assert not pixels_of(image, FLOOR_COLOUR).any()
    centre = image[MIDDLE + 120:MIDDLE + 200, WIDTH // 2 - 100:WIDTH // 2 + 100]
    assert (centre.max(axis=-1) < 100).sum() > 50  # dark text in the middle of the empty panel
    np.testing.assert_array_equal(image, render(tmp_path, {"train": TRAIN, "test": TEST}, FLOOR))


def test_non_finite_points_are_skipped(tmp_path):
    nan, inf = float("nan"), float("inf")
    train = TRAIN[:5] + [[6, nan], [nan, 3.0], [7, inf]] + TRAIN[5:]
    test = TEST + [[21, -inf]]
    kl = [[e, {**d, "z 9_9": nan}] for e, d in KL]  # a layer with no finite value at all
    kl[3][1]["z 1_0"] = inf
    clean = [[e, dict(d)] for e, d in KL]
    del clean[3][1]["z 1_0"]
    np.testing.assert_array_equal(
        render(tmp_path, {"train": train, "test": test, "kl": kl}, FLOOR),
        render(tmp_path, {"train": TRAIN, "test": TEST, "kl": clean}, FLOOR),
    )
    render(tmp_path, {"train": [[1, nan]], "test": [[1, inf]], "kl": [[1, {"z 1_0": nan}]]}, FLOOR)


def test_layer_names_are_rendered_in_the_legend(tmp_path):
    image = render(tmp_path, HISTORY, FLOOR)
    renamed = [[e, {name.replace("z 2_0", "z 7_5"): v for name, v in d.items()}] for e, d in KL]
    rows, cols = np.nonzero(changed(image, render(tmp_path, {**HISTORY, "kl": renamed}, FLOOR)))
    assert len(rows) > 20  # the glyphs changed ...
    assert rows.min() > MIDDLE and np.ptp(rows) < 30 and np.ptp(cols) < 60  # ... in one legend label


def test_many_layers_are_all_named_in_the_legend(tmp_path):
    names = [f"z {i}_{j}" for i in (1, 2) for j in range(12)]
    kl = [[e, {name: 20.0 + k + 100.0 / e for k, name in enumerate(names)}] for e in EPOCHS]
    image = render(tmp_path, {**HISTORY, "kl": kl}, FLOOR)
    assert floor_row(image)[1] > WIDTH // 2
    last = [[e, {name.replace("z 2_11", "z 3_11"): v for name, v in d.items()}] for e, d in kl]
    diff = changed(image, render(tmp_path, {**HISTORY, "kl": last}, FLOOR))
    assert diff[MIDDLE:].sum() > 20 and not diff[:MIDDLE].any()
