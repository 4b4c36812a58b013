"""Learning-curve line charts (train/test bits/dim per epoch) drawn with numpy and saved as PNG.

Everything, including the text, is rasterised here: labels use a built-in 5x7 bitmap
font scaled up by `FONT_SCALE`.
"""
import math

import numpy as np

from data.png import write_png

WIDTH, HEIGHT = 640, 400
TOP_MARGIN, BOTTOM_MARGIN, RIGHT_MARGIN, LEFT_PAD = 40, 50, 24, 10
TICK_LENGTH = 5
Y_PADDING, X_PADDING = 0.05, 0.02  # fraction of the data range added on each side
STEP_MULTIPLIERS = (1, 2, 5, 2.5, 4, 3, 1.5, 6, 8)  # tick steps, roundest first
MAX_MARKERS = 60  # denser series are drawn as lines only, markers would merge into a smear

WHITE = (255, 255, 255)
INK = (40, 40, 40)
GRID = (225, 225, 225)
FRAME = (170, 170, 170)
TRAIN_COLOUR = (31, 119, 180)  # blue
TEST_COLOUR = (230, 85, 13)  # orange

FONT_SCALE = 2
GLYPH_ROWS, GLYPH_COLS = 7, 5
TEXT_HEIGHT = GLYPH_ROWS * FONT_SCALE
_FONT = {  # 7 rows of 5 pixels each, '#' = ink
    " ": "..... ..... ..... ..... ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    "-": "..... ..... ..... ##### ..... ..... .....",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    "a": "..... ..... .###. ....# .#### #...# .####",
    "b": "#.... #.... #.##. ##..# #...# #...# ####.",
    "c": "..... ..... .###. #.... #.... #...# .###.",
    "d": "....# ....# .##.# #..## #...# #...# .####",
    "e": "..... ..... .###. #...# ##### #.... .###.",
    "f": "..##. .#..# .#... ###.. .#... .#... .#...",
    "g": "..... .#### #...# #...# .#### ....# .###.",
    "h": "#.... #.... #.##. ##..# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",
    "j": "...#. ..... ..##. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#.",
    "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "m": "..... ..... ##.#. #.#.# #.#.# #...# #...#",
    "n": "..... ..... #.##. ##..# #...# #...# #...#",
    "o": "..... ..... .###. #...# #...# #...# .###.",
    "p": "..... ..... ####. #...# ####. #.... #....",
    "q": "..... ..... .##.# #..## .#### ....# ....#",
    "r": "..... ..... #.##. ##..# #.... #.... #....",
    "s": "..... ..... .###. #.... .###. ....# ####.",
    "t": ".#... .#... ###.. .#... .#... .#..# ..##.",
    "u": "..... ..... #...# #...# #...# #..## .##.#",
    "v": "..... ..... #...# #...# #...# .#.#. ..#..",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#.",
    "x": "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    "y": "..... ..... #...# #...# .#### ....# .###.",
    "z": "..... ..... ##### ...#. ..#.. .#... #####",
}
_GLYPHS = {ch: np.array([[c == "#" for c in row] for row in rows.split()]) for ch, rows in _FONT.items()}


def _text_mask(text):
    """Boolean ink mask of `text` (case-insensitive; characters without a glyph draw as spaces)."""
    gap = np.zeros((GLYPH_ROWS, 1), bool)
    pieces = []
    for ch in text.lower():
        pieces += [_GLYPHS.get(ch, _GLYPHS[" "]), gap]
    mask = np.hstack(pieces[:-1]) if pieces else np.zeros((GLYPH_ROWS, 0), bool)
    return mask.repeat(FONT_SCALE, axis=0).repeat(FONT_SCALE, axis=1)


def _text_width(text):
    """Width in pixels of `text` as drawn by `_draw_text`."""
    return _text_mask(text).shape[1]


def _paint(image, rows, cols, colour):
    """Set the pixels at (rows, cols) to `colour`, ignoring those outside the image."""
    rows, cols = np.asarray(rows, int), np.asarray(cols, int)
    inside = (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1])
    image[rows[inside], cols[inside]] = colour


def _draw_text(image, text, x, top, align="left", colour=INK):
    """Draw `text` with its top at row `top`; `x` is its left edge, centre or right edge per `align`."""
    mask = _text_mask(text)
    left = x - {"left": 0, "centre": mask.shape[1] // 2, "right": mask.shape[1]}[align]
    rows, cols = np.nonzero(mask)
    _paint(image, rows + top, cols + left, colour)


def _draw_squares(image, rows, cols, colour, first, last):
    """Paint a square spanning offsets first..last (inclusive) around each (row, col)."""
    rows, cols = np.asarray(rows, int), np.asarray(cols, int)
    for dr in range(first, last + 1):
        for dc in range(first, last + 1):
            _paint(image, rows + dr, cols + dc, colour)


def _draw_polyline(image, rows, cols, colour):
    """Draw a 2 px thick line through the pixel points by sampling each segment once per pixel."""
    samples_r, samples_c = [rows[:1]], [cols[:1]]
    for r0, c0, r1, c1 in zip(rows[:-1], cols[:-1], rows[1:], cols[1:]):
        t = np.linspace(0.0, 1.0, max(abs(r1 - r0), abs(c1 - c0)) + 1)
        samples_r.append(np.round(r0 + t * (r1 - r0)))
        samples_c.append(np.round(c0 + t * (c1 - c0)))
    _draw_squares(image, np.concatenate(samples_r), np.concatenate(samples_c), colour, 0, 1)


def _finite_points(epochs, costs):
    """Return the (epoch, cost) float arrays with every pair holding a NaN or inf dropped."""
    x, y = np.asarray(epochs, float).ravel(), np.asarray(costs, float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"got {x.size} epochs but {y.size} costs")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _padded_range(values, padding):
    """(low, high) covering `values` plus `padding` of their range per side; a flat range is widened."""
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    if low == high:
        half = max(0.05 * abs(low), 0.5)
        low, high = low - half, high + half
    margin = padding * (high - low)
    return low - margin, high + margin


def _nice_ticks(low, high, integer=False):
    """Four to six round-numbered ticks in [low, high]: multiples of a step m * 10**e.

    Multipliers are tried roundest first (`STEP_MULTIPLIERS`); as consecutive ones differ by at
    most 1.5x, some step always yields 4-6 ticks. With `integer` the step is a whole number,
    and when no such step fits, the one giving the tick count closest to five is used.
    Returns (ticks, decimals), decimals being the digits after the point the step needs.
    """
    exponent = math.floor(math.log10((high - low) / 5))
    steps = [m * 10.0 ** e for m in STEP_MULTIPLIERS for e in range(exponent - 1, exponent + 2)]
    if integer:
        steps = [s for s in steps if s >= 1 and s == round(s)] + [1.0]

    def index_range(step):
        return math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)

    def count(step):
        first, last = index_range(step)
        return last - first + 1

    fitting = [s for s in steps if 4 <= count(s) <= 6]
    step = fitting[0] if fitting else min(steps, key=lambda s: abs(count(s) - 5))
    first, last = index_range(step)
    decimals = next(d for d in range(16) if abs(round(step, d) - step) <= 1e-9 * step)
    return [k * step for k in range(first, last + 1)], decimals


def _format(value, decimals):
    """Tick label text for `value`, never showing a negative zero."""
    return f"{round(value, decimals) + 0.0:.{decimals}f}"


def _draw_legend(image, entries, right, top):
    """Boxed legend of (name, colour) rows with line-and-marker swatches, top-right at (top, right)."""
    row_height, swatch = TEXT_HEIGHT + 8, 24
    width = 8 + swatch + 8 + max(_text_width(name) for name, _ in entries) + 8
    height = 4 + row_height * len(entries)
    left = right - width
    image[top:top + height, left:right] = FRAME
    image[top + 1:top + height - 1, left + 1:right - 1] = WHITE
    for i, (name, colour) in enumerate(entries):
        centre = top + 4 + i * row_height + row_height // 2
        _draw_polyline(image, np.array([centre, centre]), np.array([left + 8, left + 8 + swatch]), colour)
        _draw_squares(image, [centre], [left + 8 + swatch // 2], colour, -2, 2)
        _draw_text(image, name, left + 16 + swatch, centre - TEXT_HEIGHT // 2)


def render_learning_curves(epochs_train, train_costs, epochs_test, test_costs, title="bits/dim"):
    """Render train (blue) and test (orange) cost-per-epoch curves as an HxWx3 uint8 image.

    Points with a NaN or inf epoch or cost are skipped; either series may be empty. The y
    range is the data range padded by 5%, with horizontal grid lines at round values.
    `title` is written above the y axis and "epoch" below the x axis.
    """
    series = [
        ("train", TRAIN_COLOUR, *_finite_points(epochs_train, train_costs)),
        ("test", TEST_COLOUR, *_finite_points(epochs_test, test_costs)),
    ]
    all_x = np.concatenate([x for _, _, x, _ in series])
    all_y = np.concatenate([y for _, _, _, y in series])
    x_low, x_high = _padded_range(all_x, X_PADDING)
    y_low, y_high = _padded_range(all_y, Y_PADDING)
    x_ticks, x_decimals = _nice_ticks(x_low, x_high, integer=bool(np.all(all_x == np.round(all_x))))
    y_ticks, y_decimals = _nice_ticks(y_low, y_high)
    y_labels = [_format(v, y_decimals) for v in y_ticks]

    left = LEFT_PAD + max(map(_text_width, y_labels)) + TICK_LENGTH + 4
    right, top, bottom = WIDTH - RIGHT_MARGIN, TOP_MARGIN, HEIGHT - BOTTOM_MARGIN

    def to_col(x):
        return np.round(left + (np.asarray(x) - x_low) / (x_high - x_low) * (right - left)).astype(int)

    def to_row(y):
        return np.round(bottom - (np.asarray(y) - y_low) / (y_high - y_low) * (bottom - top)).astype(int)

    image = np.full((HEIGHT, WIDTH, 3), WHITE, np.uint8)
    for value, label in zip(y_ticks, y_labels):
        row = int(to_row(value))
        image[row, left:right] = GRID
        image[row, left - TICK_LENGTH:left] = INK
        _draw_text(image, label, left - TICK_LENGTH - 4, row - TEXT_HEIGHT // 2, align="right")
    for value in x_ticks:
        col = int(to_col(value))
        image[bottom:bottom + TICK_LENGTH, col] = INK
        _draw_text(image, _format(value, x_decimals), col, bottom + TICK_LENGTH + 4, align="centre")

    for _, colour, x, y in series:
        rows, cols = to_row(y), to_col(x)
        _draw_polyline(image, rows, cols, colour)
        if x.size <= MAX_MARKERS:
            _draw_squares(image, rows, cols, colour, -2, 2)

    image[top:bottom + 1, left] = INK
    image[bottom, left:right + 1] = INK
    _draw_text(image, title, left, (top - TEXT_HEIGHT) // 2)
    _draw_text(image, "epoch", (left + right) // 2, bottom + TICK_LENGTH + 8 + TEXT_HEIGHT, align="centre")
    entries = [(name, colour) for name, colour, x, _ in series if x.size]
    if entries:
        _draw_legend(image, entries, right - 8, top + 8)
    return image


def plot_learning_curves(path, epochs_train, train_costs, epochs_test, test_costs, title="bits/dim"):
    """Draw the learning curves (see `render_learning_curves`) and write them atomically to `path` as PNG."""
    write_png(path, render_learning_curves(epochs_train, train_costs, epochs_test, test_costs, title))
