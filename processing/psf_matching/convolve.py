"""Convolving a mosaic and its uncertainty with a kernel, tile by tile (pure: arrays in, arrays
out; the arrays may be memory maps, so a mosaic of any size is convolved in bounded memory).

Normalised convolution (Knutsson & Westin 1993), as a kernel of sum 1 on an image with holes
needs: with ``w`` = 1 on valid pixels (finite SCI and ERR) and 0 elsewhere,

    SCI' = (K * (w SCI)) / (K * w)
    ERR' = sqrt(K^2 * (w ERR^2)) / |K * w|

``K * w`` is the coverage: the fraction of the kernel's weight that fell on valid pixels. A
pixel is kept where the coverage is at least ``min_coverage`` (default 0.5): a hole smaller than
the kernel is filled from its neighbours, nothing is eroded by a NaN (a plain FFT convolution
spreads each NaN over the kernel's whole area), and the map's edge stays where it was (the
coverage is 0.5 on a straight edge: pixels outside it stay NaN). ERR' is exact for
uncorrelated pixel errors; the correlated noise of drizzled mosaics makes the real noise of a
smoothed mosaic larger (docs/psf-matching.md measures by how much).
"""

from __future__ import annotations

import numpy as np


def _fft(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(a, k, mode="same")


def convolve_block(sci: np.ndarray, err: np.ndarray | None, kernel: np.ndarray, min_coverage: float = 0.5):
    """Normalised convolution of one block (see the module docstring).

    Parameters
    ----------
    sci : numpy.ndarray, shape (ny, nx)
        Surface brightness (any unit); NaN where there are no data.
    err : numpy.ndarray, shape (ny, nx), or None
        1-sigma uncertainty, same unit; NaN where unknown (the pixel is then not used).
    kernel : numpy.ndarray, shape (m, m), m odd
        Centred on its middle pixel, sum 1.
    min_coverage : float
        Smallest fraction of the kernel's weight on valid pixels for an output pixel.

    Returns
    -------
    sci_out, err_out, coverage : numpy.ndarray, shape (ny, nx)
        float32 SCI' and ERR' (None without ``err``), NaN where the coverage is below
        ``min_coverage``; the coverage (float64).
    """
    sci = np.asarray(sci, np.float64)
    valid = np.isfinite(sci)
    if err is not None:
        err = np.asarray(err, np.float64)
        valid &= np.isfinite(err)
    w = valid.astype(np.float64)
    coverage = _fft(w, kernel)
    num = _fft(np.where(valid, sci, 0.0), kernel)
    keep = coverage >= min_coverage
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(keep, num / coverage, np.nan).astype(np.float32)
        eout = None
        if err is not None:
            var = _fft(np.where(valid, err * err, 0.0), kernel * kernel)
            eout = np.where(keep, np.sqrt(np.clip(var, 0.0, None)) / np.abs(coverage), np.nan).astype(np.float32)
    return out, eout, coverage


def tiles(shape: tuple[int, int], tile: int):
    """``(y0, y1, x0, x1)`` of the tiles covering ``shape`` (row-major)."""
    ny, nx = shape
    for y0 in range(0, ny, tile):
        for x0 in range(0, nx, tile):
            yield y0, min(ny, y0 + tile), x0, min(nx, x0 + tile)


def convolve_tiled(
    sci: np.ndarray,
    err: np.ndarray | None,
    kernel: np.ndarray,
    sci_out: np.ndarray,
    err_out: np.ndarray | None = None,
    min_coverage: float = 0.5,
    tile: int = 2048,
) -> float:
    """:func:`convolve_block` over tiles of ``tile`` x ``tile`` pixels, each read with a margin
    of half the kernel (so the result equals one convolution of the whole image: the margin
    holds every pixel the kernel reaches), written into ``sci_out``/``err_out`` (same shape as
    ``sci``; may be memory maps).

    Memory: about 12 float64 arrays of (tile + kernel)^2 at a time (~0.6 GB for a 2048 tile and
    a 200-pixel kernel), whatever the mosaic's size.

    Returns
    -------
    float
        Fraction of the output pixels that are finite.
    """
    ny, nx = sci.shape
    h = kernel.shape[0] // 2
    finite = 0
    for y0, y1, x0, x1 in tiles((ny, nx), tile):
        ya, yb, xa, xb = max(0, y0 - h), min(ny, y1 + h), max(0, x0 - h), min(nx, x1 + h)
        s = np.asarray(sci[ya:yb, xa:xb])
        e = np.asarray(err[ya:yb, xa:xb]) if err is not None else None
        # pixels beyond the image are zero-weight: the FFT's zero padding of the block does that
        # at the image's edges, the margin does it inside
        o, eo, _ = convolve_block(s, e, kernel, min_coverage)
        cut = (slice(y0 - ya, y0 - ya + (y1 - y0)), slice(x0 - xa, x0 - xa + (x1 - x0)))
        sci_out[y0:y1, x0:x1] = o[cut]
        if err_out is not None and eo is not None:
            err_out[y0:y1, x0:x1] = eo[cut]
        finite += int(np.isfinite(o[cut]).sum())
    return finite / float(ny * nx)


def beam_keywords(fwhm_arcsec: float) -> dict[str, tuple[float, str]]:
    """FITS beam keywords of a circular Gaussian of ``fwhm_arcsec``: BMAJ, BMIN (degrees), BPA."""
    deg = float(fwhm_arcsec) / 3600.0
    return {
        "BMAJ": (deg, "[deg] beam major axis FWHM (Gaussian)"),
        "BMIN": (deg, "[deg] beam minor axis FWHM (Gaussian)"),
        "BPA": (0.0, "[deg] beam position angle"),
    }


def robust_noise(image: np.ndarray, scale_pixels: float, faint_percentile: float = 30.0) -> float:
    """Pixel noise of a smoothed image: 1.4826 x the median absolute deviation of the image
    minus a Gaussian smoothing of it at ``scale_pixels`` sigma (which removes the sky and the
    galaxy's structure larger than that), over the pixels fainter than ``faint_percentile``
    (the emptiest sky the image has). Unit of ``image``; NaN with too few pixels."""
    from scipy.ndimage import gaussian_filter

    img = np.asarray(image, np.float64)
    valid = np.isfinite(img)
    if valid.sum() < 100:
        return float("nan")
    w = gaussian_filter(valid.astype(float), scale_pixels)
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = gaussian_filter(np.where(valid, img, 0.0), scale_pixels) / w
    resid = (img - smooth)[valid & (w > 0.9)]
    faint = img[valid & (w > 0.9)] <= np.nanpercentile(img[valid], faint_percentile)
    r = resid[faint]
    if r.size < 100:
        return float("nan")
    return float(1.4826 * np.median(np.abs(r - np.median(r))))
