"""A procedurally generated 'toy' image problem that needs no download.

Each 32x32 RGB image is a smooth two-colour linear gradient in a random direction,
an optional filled rectangle and a filled circle on top, all with random colours,
positions and sizes. Generation is vectorised and deterministic in the seed.
"""
import numpy as np

SIZE = 32
TRAIN_SIZE, TEST_SIZE = 2000, 500
TRAIN_SEED, TEST_SEED = 1, 2


def toy_images(n, seed):
    """Return `n` toy images as a uint8 array of shape (n, 3, 32, 32), determined by `seed`."""
    rng = np.random.RandomState(seed)
    coords = np.arange(SIZE, dtype=np.float32) + 0.5
    y, x = coords[None, :, None], coords[None, None, :]  # broadcast against (n, 32, 32)

    def per_image(values):
        return values[:, None, None]

    def random_colours():
        return rng.uniform(0, 255, size=(n, 1, 1, 3)).astype(np.float32)

    start, end = random_colours(), random_colours()
    angle = per_image(rng.uniform(0, 2 * np.pi, size=n).astype(np.float32))
    cos, sin = np.cos(angle), np.sin(angle)
    along = ((x / SIZE - 0.5) * cos + (y / SIZE - 0.5) * sin) / (np.abs(cos) + np.abs(sin))
    images = start + (end - start) * (along + 0.5)[..., None]

    rect_colour = random_colours()
    top, left = (per_image(rng.randint(0, SIZE - 6, size=n)) for _ in range(2))
    height, width = (per_image(rng.randint(6, 17, size=n)) for _ in range(2))
    has_rect = per_image(rng.rand(n) < 0.5)
    in_rect = has_rect & (y >= top) & (y < top + height) & (x >= left) & (x < left + width)
    np.copyto(images, rect_colour, where=in_rect[..., None])

    circle_colour = random_colours()
    centre_y, centre_x = (per_image(rng.uniform(6, SIZE - 6, size=n)) for _ in range(2))
    radius = per_image(rng.uniform(3, 9, size=n))
    in_circle = (y - centre_y) ** 2 + (x - centre_x) ** 2 <= radius**2
    np.copyto(images, circle_colour, where=in_circle[..., None])

    return np.ascontiguousarray(np.round(images).astype(np.uint8).transpose(0, 3, 1, 2))


def load_toy():
    """Return `(train_x, test_x)`: 2000 and 500 toy images from different seeds."""
    return toy_images(TRAIN_SIZE, TRAIN_SEED), toy_images(TEST_SIZE, TEST_SEED)
