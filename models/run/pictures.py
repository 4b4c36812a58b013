"""Sample pictures: tile images into one grid and save it as a PNG (with Pillow)."""
import numpy as np
from PIL import Image

from layers.runtime.files import atomic_write


def image_grid(images, n_cols=10):
    """Tile uint8 NCHW images (C = 1 or 3) row-major into an HxWx3 uint8 grid.

    Image k goes to grid row k // n_cols, column k % n_cols; the grid always has
    `n_cols` columns and unused cells of the last row are black.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected uint8 NCHW images with 1 or 3 channels, got {images.dtype} {images.shape}"
        )
    n, _, height, width = images.shape
    n_rows = -(-n // n_cols)
    cells = np.zeros((n_rows * n_cols, 3, height, width), np.uint8)
    cells[:n] = images  # broadcasting repeats a single channel to all three
    grid = cells.reshape(n_rows, n_cols, 3, height, width).transpose(0, 3, 1, 4, 2)
    return grid.reshape(n_rows * height, n_cols * width, 3)


def save_image_grid(path, images, n_cols=10):
    """Write `image_grid(images, n_cols)` to `path` as an RGB PNG, atomically."""
    picture = Image.fromarray(image_grid(images, n_cols))
    atomic_write(path, lambda f: picture.save(f, format="PNG"))
