"""Autoregressive (masked) convolutions (docs/model.md §3)."""
import numpy as np

from .conv import Conv2d
from .runtime.backend import floatX


def ar_mask(n_out, n_in, kernel, zerodiagonal, flipmask):
    """Mask ``(n_out, n_in+1, kh, kw)`` of an autoregressive conv (last input = pad channel).

    With a true (flipped) convolution, output pixel (y, x) then sees only inputs above it,
    left of it in its row, and at the same pixel only "earlier" channels: output channel
    group ``i`` (of ``n_out/n_in`` channels) sees input channels ``< i`` (``<= i`` unless
    ``zerodiagonal``); when ``n_out < n_in``, output ``i`` sees input groups ``< i``.
    """
    kh, kw = kernel
    has_pad_channel = kh > 1 or kw > 1
    if n_out % n_in and n_in % n_out:
        raise ValueError(f"a masked convolution needs one of n_in={n_in}, n_out={n_out} "
                         f"to divide the other")
    l, m = (kh - 1) // 2, (kw - 1) // 2
    mask = np.ones((n_out, n_in + int(has_pad_channel), kh, kw), dtype=floatX)
    mask[:, :, :l, :] = 0
    mask[:, :, l, :m] = 0
    centre = mask[:, :, l, m]
    if n_out >= n_in:
        k = n_out // n_in
        for i in range(n_in):
            centre[i * k:(i + 1) * k, i + 1:] = 0
            if zerodiagonal:
                centre[i * k:(i + 1) * k, i] = 0
    else:
        k = n_in // n_out
        for i in range(n_out):
            centre[i, (i + 1) * k:] = 0
            if zerodiagonal:
                centre[i, i * k:(i + 1) * k] = 0
    if flipmask:
        mask = mask[::-1, ::-1, ::-1, ::-1].copy()
    return mask


class MaskedConv2d(Conv2d):
    """``ar_conv2d``: a `Conv2d` whose weight is multiplied by `ar_mask` wherever it is used.

    Differences from `Conv2d` (docs/model.md §3): the norm gets ``+1e-8`` (a fully masked output
    channel has norm 0), and data-dependent init targets std 1 rather than 0.1.
    """

    init_target_std = 1.0
    init_eps = 0.0
    norm_eps = 1e-8

    def __init__(self, initial, rng, name, n_in, n_out, kernel, zerodiagonal=True,
                 flipmask=False):
        self.mask = ar_mask(n_out, n_in, kernel, zerodiagonal, flipmask)
        # Before the norm, the original also zeroes the centre tap of the first output
        # group (docs/model.md §3). Unflipped, the mask already holds those at 0; flipped it does not.
        self.norm_mask = self.mask.copy()
        if zerodiagonal:
            group = n_out // n_in if n_out >= n_in else 1
            self.norm_mask[:group, :, (kernel[0] - 1) // 2, (kernel[1] - 1) // 2] = 0
        super().__init__(initial, rng, name, n_in, n_out, kernel)
        # Taps the mask zeroes for every filter cost nothing in the convolution.
        used = self.norm_mask[:, :n_in].reshape(n_out, n_in, -1).any(axis=(0, 1))
        self.taps = None if used.all() else tuple(np.flatnonzero(used))

    def initial_weights(self, rng, shape):
        return self.mask * super().initial_weights(rng, shape)
