"""Minimal PNG writing/reading (8-bit RGB or greyscale) with the standard library only."""
import os
import struct
import tempfile
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (0 = grey, 2 = RGB)


def _chunk(kind, payload):
    """Return one PNG chunk: length, type, payload and the CRC-32 of type + payload."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(image):
    """Return the PNG file bytes for a uint8 HxWx3 (RGB) or HxW (grey) array."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected a uint8 HxWx3 or HxW array, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    colour_type = COLOUR_TYPES[1 if image.ndim == 2 else 3]
    rows = image.reshape(height, -1)
    scanlines = np.hstack([np.zeros((height, 1), np.uint8), rows])  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 9))
        + _chunk(b"IEND", b"")
    )


def write_png(path, image):
    """Atomically write a uint8 HxWx3 (RGB) or HxW (grey) array to `path` as a PNG."""
    encoded = encode_png(image)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encoded)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_png(path):
    """Read a PNG written by `write_png` (8-bit RGB or grey, no interlace, filter type 0)."""
    with open(path, "rb") as f:
        blob = f.read()
    if not blob.startswith(SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    pos, chunks = len(SIGNATURE), {}
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos:pos + 4])
        kind, payload = blob[pos + 4:pos + 8], blob[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + payload) != crc:
            raise ValueError(f"{path}: bad CRC in chunk {kind!r}")
        chunks[kind] = chunks.get(kind, b"") + payload
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    channels = {v: k for k, v in COLOUR_TYPES.items()}.get(colour_type)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: only 8-bit non-interlaced RGB/grey PNGs are supported")
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + width * channels)
    if raw[:, 0].any():
        raise ValueError(f"{path}: only filter type 0 is supported")
    pixels = raw[:, 1:].reshape(height, width, channels)
    return pixels[:, :, 0] if channels == 1 else pixels


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
    n, channels, height, width = images.shape
    n_rows = -(-n // n_cols)
    cells = np.zeros((n_rows * n_cols, 3, height, width), np.uint8)
    cells[:n] = images  # broadcasting repeats a single channel to all three
    grid = cells.reshape(n_rows, n_cols, 3, height, width).transpose(0, 3, 1, 4, 2)
    return grid.reshape(n_rows * height, n_cols * width, 3)
