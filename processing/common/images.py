"""Images on numpy arrays that several stages use (NaN where an image has no data)."""

from __future__ import annotations

import numpy as np


def shifted(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``image`` moved by (dy, dx) pixels (bilinear), NaN where it has no data."""
    from scipy import ndimage

    valid = np.isfinite(image)
    vals = ndimage.shift(np.where(valid, image, 0.0), (dy, dx), order=1, mode="constant", cval=0.0)
    w = ndimage.shift(valid.astype(float), (dy, dx), order=1, mode="constant", cval=0.0)
    return np.where(w > 0.999, vals, np.nan)
