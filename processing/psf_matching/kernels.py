"""Convolution kernels from a band's PSF to a Gaussian, by the method of Aniano et al. (2011)
(the paper's section 3.10 and Table 2). Pure: arrays in, arrays
out.

- :func:`circularise`: the PSF averaged over rotations about its centre (Aniano: the kernels
  are made from circularised PSFs, so that they do not depend on the telescope's orientation);
- :func:`gaussian` (processing/common/psf.py): a normalised circular Gaussian on the same grid;
- :func:`make_kernel`: the ratio of Fourier transforms (photutils ``make_kernel``) with
  Aniano's low-pass filter (a cosine taper between 0.7 k_H and k_H, k_H where the source PSF's
  transform falls to 0.5% of its peak), normalised to sum 1;
- :func:`metrics`: Aniano's W- (the negative weight of the kernel, their eq. 21) and D (the
  residual between the target and the kernel-convolved source, their eq. 20);
- :func:`safe_fwhm`: the narrowest Gaussian reached with W- at most a threshold (very safe
  0.3, safe 0.5, aggressive 1.0: the paper's Table 2);
- :func:`to_pixel_scale`: the kernel on the mosaic's pixel grid.

Grids: square arrays with the PSF centred on the array centre ((n - 1) / 2 on each axis, as
the synthetic program writes them and WebbPSF/stpsf do), ``pixscale`` arcsec per pixel.
"""

from __future__ import annotations

import math

import numpy as np

from processing.common.psf import FWHM_TO_SIGMA, gaussian, measure_fwhm

#: Aniano et al. (2011): W- of very safe, safe and aggressive kernels
SAFETY = {"very_safe": 0.3, "safe": 0.5, "aggressive": 1.0}


def circularise(psf: np.ndarray, n_angles: int = 36) -> np.ndarray:
    """The mean of ``n_angles`` copies of ``psf`` rotated about the array centre (cubic
    interpolation, negative interpolation ringing clipped), normalised to sum 1.

    Parameters
    ----------
    psf : numpy.ndarray, shape (n, n)
    n_angles : int
        Rotations evenly spread over 360 degrees.

    Returns
    -------
    numpy.ndarray
        float64, shape (n, n), sum 1.
    """
    from scipy.ndimage import rotate

    psf = np.asarray(psf, float)
    acc = np.zeros_like(psf)
    for angle in np.arange(n_angles) * 360.0 / n_angles:
        acc += rotate(psf, angle, reshape=False, order=3, mode="constant", cval=0.0)
    acc = np.clip(acc, 0.0, None)
    return acc / acc.sum()


def radial_frequency(n: int) -> np.ndarray:
    """|k| of each element of an fftshift-ed (n, n) transform, cycles per pixel."""
    f = np.fft.fftshift(np.fft.fftfreq(n))
    return np.hypot(*np.meshgrid(f, f))


class AnianoFilter:
    """Aniano et al. (2011)'s low-pass filter: 1 below ``k_low``, a cosine taper to 0 at
    ``k_high``, 0 beyond (k in cycles per pixel); a photutils window (called with the shape)."""

    def __init__(self, k_high: float, low_fraction: float = 0.7):
        self.k_high, self.k_low = float(k_high), float(low_fraction * k_high)

    def __call__(self, shape) -> np.ndarray:
        k = radial_frequency(shape[0])
        w = np.where(k <= self.k_low, 1.0, 0.0)
        taper = (k > self.k_low) & (k <= self.k_high)
        w[taper] = 0.5 * (1.0 + np.cos(np.pi * (k[taper] - self.k_low) / (self.k_high - self.k_low)))
        return w


def k_high(source: np.ndarray, level: float = 0.005) -> float:
    """The spatial frequency (cycles per pixel) where the azimuthal mean of the source PSF's
    transform amplitude first falls below ``level`` of its peak."""
    amp = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(source))))
    k = radial_frequency(source.shape[0])
    n_bins = max(8, min(200, source.shape[0] // 2))  # about one frequency step per bin
    edges = np.linspace(0, 0.5, n_bins + 1)
    idx = np.digitize(k.ravel(), edges)
    prof = np.array([amp.ravel()[idx == i].mean() if np.any(idx == i) else np.nan for i in range(1, edges.size)])
    below = np.nonzero(prof < level * np.nanmax(prof))[0]  # empty bins (NaN) never count
    return float(edges[below[0]]) if below.size else 0.5


def make_kernel(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The kernel K with ``source * K ~ target`` (Aniano et al. 2011: FT(target) / FT(source)
    under their low-pass filter), normalised to sum 1. Both on the same grid, same centre."""
    from photutils.psf_matching import make_kernel as ratio_kernel

    k = ratio_kernel(source, target, window=AnianoFilter(k_high(source)), regularization=0.0)
    return k / k.sum()


def metrics(kernel: np.ndarray, source: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Aniano et al. (2011)'s W- (eq. 21: the kernel's negative weight, for a kernel of sum 1)
    and D (eq. 20: sum of |target - source * K|, the fraction of the target not reproduced)."""
    from scipy.signal import fftconvolve

    w_minus = float(np.sum(np.abs(kernel) - kernel) / 2.0)
    d = float(np.sum(np.abs(target - fftconvolve(source, kernel, mode="same"))))
    return w_minus, d


def centred_odd(psf: np.ndarray) -> np.ndarray:
    """The PSF on an odd square grid with its centre on the middle pixel: an even grid (centre
    between pixels, as WebbPSF/stpsf and the synthetic program write oversampled PSFs) is
    shifted by half a pixel (Fourier shift: exact for a band-limited image) and its last row
    and column dropped. Normalised to sum 1."""
    from scipy.ndimage import fourier_shift

    p = np.asarray(psf, float)
    if p.shape[0] != p.shape[1]:
        raise ValueError(f"PSF must be square, got {p.shape}")
    if p.shape[0] % 2 == 0:
        p = np.real(np.fft.ifft2(fourier_shift(np.fft.fft2(p), (-0.5, -0.5))))[:-1, :-1]
    return p / p.sum()


def to_pixel_scale(psf: np.ndarray, pixscale: float, pixel_out: float) -> np.ndarray:
    """A PSF (as written: centred on the array centre) on a grid of ``pixel_out`` arcsec, odd
    and centred on its middle pixel, sum 1: exact block sums when ``pixel_out`` is an integer
    multiple of ``pixscale`` and the blocks fit the grid symmetrically (a PSF oversampled from
    the mosaic's pixels: 324 -> 81), else photutils' ``resize_psf`` (interpolation)."""
    ratio = pixel_out / pixscale
    f = int(round(ratio))
    n = psf.shape[0]
    if abs(ratio - f) < 1e-6 and f >= 1 and n % f == 0 and (n // f) % 2 == 1:
        k = np.asarray(psf, float).reshape(n // f, f, n // f, f).sum(axis=(1, 3))
        return k / k.sum()
    from photutils.psf_matching import resize_psf

    return centred_odd(resize_psf(centred_odd(psf), pixscale, pixel_out))


def pad_to(img: np.ndarray, n: int) -> np.ndarray:
    """An odd centred image zero-padded (or trimmed) to (n, n), n odd."""
    m = img.shape[0]
    if m == n:
        return img
    if m > n:
        o = (m - n) // 2
        return img[o : o + n, o : o + n]
    out = np.zeros((n, n))
    o = (n - m) // 2
    out[o : o + m, o : o + m] = img
    return out


def kernel_to_gaussian(source: np.ndarray, pixscale: float, fwhm_arcsec: float, circular: bool = True):
    """Kernel from a source PSF (odd grid, centred: :func:`centred_odd` or
    :func:`to_pixel_scale`) to a Gaussian of ``fwhm_arcsec``, with its W- and D.

    The grid is padded to hold the Gaussian to 5 sigma on each side, so nothing wraps around.

    Returns
    -------
    kernel : numpy.ndarray
        Odd square, centred on its middle pixel, sum 1, ``pixscale`` per pixel.
    w_minus, d : float
    """
    src = np.asarray(source, float)
    n = max(src.shape[0], 2 * int(math.ceil(5 * fwhm_arcsec * FWHM_TO_SIGMA / pixscale)) + 1)
    src = pad_to(src, n)
    src = circularise(src) if circular else src / src.sum()
    target = gaussian(n, pixscale, fwhm_arcsec)
    kernel = make_kernel(src, target)
    w_minus, d = metrics(kernel, src, target)
    return kernel, w_minus, d


def safe_fwhm(
    source: np.ndarray,
    pixscale: float,
    w_max: float,
    lo: float | None = None,
    hi: float | None = None,
    tol_arcsec: float = 0.001,
) -> float:
    """Narrowest Gaussian FWHM (arcsec) whose kernel from ``source`` (odd, centred) has
    W- <= ``w_max`` (bisection: W- falls as the target widens). ``lo``/``hi``: the bracket
    (default: the source's FWHM and 4x it); NaN if even ``hi`` is not safe enough."""
    src = circularise(source)
    f0 = measure_fwhm(src, pixscale)
    lo = f0 if lo is None else lo
    hi = 4.0 * f0 if hi is None else hi

    def w(f):
        return kernel_to_gaussian(src, pixscale, f, circular=False)[1]

    if w(hi) > w_max:
        return float("nan")
    while hi - lo > tol_arcsec:
        mid = 0.5 * (lo + hi)
        if w(mid) <= w_max:
            hi = mid
        else:
            lo = mid
    return float(hi)
