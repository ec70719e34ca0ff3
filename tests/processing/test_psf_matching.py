"""PSF-matching kernels (Aniano et al. 2011) on known PSFs: normalisation, the FWHM a point
source gets, the metrics, the safe resolutions' order, grids."""

from __future__ import annotations

import numpy as np
import pytest

from processing.psf_matching import kernels as K
from processing.simulate.external import measure_fwhm


def _airy_like(n=161, pixscale=0.02, fwhm=0.3):
    """A centred PSF with an Airy-like ring: a Gaussian core plus a faint annulus."""
    yy, xx = np.indices((n, n)) - (n - 1) / 2
    r = np.hypot(xx, yy) * pixscale
    core = np.exp(-0.5 * (r / (fwhm * K.FWHM_TO_SIGMA)) ** 2)
    ring = 0.02 * np.exp(-0.5 * ((r - 1.6 * fwhm) / (0.15 * fwhm)) ** 2)
    p = core + ring
    return p / p.sum()


def test_kernel_sums_to_one_and_gives_the_target_fwhm():
    from scipy.signal import fftconvolve

    psf = _airy_like()
    for target in (0.5, 0.85, 1.0):
        k, w_minus, d = K.kernel_to_gaussian(psf, 0.02, target)
        assert k.shape[0] % 2 == 1 and abs(k.sum() - 1) < 1e-6
        n = k.shape[0]
        point = fftconvolve(K.pad_to(K.circularise(psf), n), k, mode="same")
        assert measure_fwhm(point, 0.02) == pytest.approx(target, rel=0.02)
        yy, xx = np.indices(k.shape) - (n - 1) / 2
        assert abs((k * xx).sum()) < 1e-3 and abs((k * yy).sum()) < 1e-3  # no shift
        assert d < 0.02


def test_gaussian_to_wider_gaussian_needs_no_negative_weight():
    psf = K.gaussian(121, 0.05, 0.4)
    k, w_minus, d = K.kernel_to_gaussian(psf, 0.05, 1.0)
    assert w_minus < 0.01 and d < 0.01
    # the kernel is the Gaussian of the quadrature difference
    assert measure_fwhm(k, 0.05) == pytest.approx(np.sqrt(1.0 - 0.4**2), rel=0.02)


def test_safe_resolutions_are_ordered_and_near_the_source():
    psf = _airy_like()
    vs, s, ag = (K.safe_fwhm(psf, 0.02, K.SAFETY[k]) for k in ("very_safe", "safe", "aggressive"))
    assert 0.3 < ag < s < vs < 0.6, (vs, s, ag)
    assert K.kernel_to_gaussian(psf, 0.02, vs)[1] <= 0.3 + 1e-3


def test_centred_odd_and_block_sums_keep_the_centre():
    n = 324
    yy, xx = np.indices((n, n)) - (n - 1) / 2  # centre between pixels, as written
    psf = np.exp(-0.5 * (xx**2 + yy**2) / 20.0**2)
    odd = K.centred_odd(psf)
    assert odd.shape == (323, 323)
    y2, x2 = np.indices(odd.shape) - 161
    assert abs((odd * x2).sum()) < 1e-6 and abs((odd * y2).sum()) < 1e-6
    coarse = K.to_pixel_scale(psf, 0.0275, 0.11)
    assert coarse.shape == (81, 81) and np.unravel_index(coarse.argmax(), coarse.shape) == (40, 40)
    assert coarse.sum() == pytest.approx(1.0)
