"""Background anchoring, the pure algorithms (the paper's section 3.9 and Figure 8): arrays in,
numbers out, no files.

- :func:`block_mean` and :func:`smooth_to`: a mosaic brought to a coarse Gaussian resolution
  (block averages, then the Gaussian kernel that remains), NaN-aware, in bounded memory;
- :func:`sky_level`: the zero of a wide-field reference image, from its galaxy-free sky;
- :func:`binned_fit`: intensities of two images of the same region binned by the one being
  anchored, the median of the other per bin, a line fitted with iterative clipping; the
  intercept over the slope is the offset; a block bootstrap gives its uncertainty and a
  quadratic fit tests the linearity.

Units: surface brightness in MJy/sr, angles in arcsec, images indexed ``[row, column]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FWHM_TO_SIGMA = 1.0 / math.sqrt(8.0 * math.log(2.0))


class AnchorFailed(Exception):
    """No trustworthy offset from this pair of images (the reason is the message)."""


# -- resolution ------------------------------------------------------------------------------
def block_mean(rows, factor: int, min_coverage: float = 0.5, rows_per_read: int = 2048) -> np.ndarray:
    """Mean of the finite pixels in ``factor`` x ``factor`` blocks, read in row strips.

    Parameters
    ----------
    rows : array_like, shape (ny, nx)
        The image (a numpy array or a memory-mapped FITS section: only ``rows_per_read`` rows
        are read at once).
    factor : int
        Block side in pixels (1: the image itself, NaN where not finite).
    min_coverage : float
        Fewest finite pixels in a block, as a fraction of its area; below: NaN.
    rows_per_read : int
        Rows read at once (rounded down to whole blocks, at least one block).

    Returns
    -------
    numpy.ndarray
        float64, shape (ny // factor, nx // factor): block ``[j, i]`` covers pixels
        ``[j*f:(j+1)*f, i*f:(i+1)*f]`` (a partial last block is dropped).
    """
    f = int(factor)
    ny, nx = rows.shape
    by, bx = ny // f, nx // f
    out = np.full((by, bx), np.nan)
    step = max(1, rows_per_read // f) * f
    for r0 in range(0, by * f, step):
        strip = np.asarray(rows[r0 : min(r0 + step, by * f), : bx * f], dtype=np.float64)
        good = np.isfinite(strip)
        s = np.where(good, strip, 0.0).reshape(-1, f, bx, f).sum(axis=(1, 3))
        n = good.reshape(-1, f, bx, f).sum(axis=(1, 3))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[r0 // f : r0 // f + s.shape[0]] = np.where(n >= min_coverage * f * f, s / np.maximum(n, 1), np.nan)
    return out


def block_factor(pixel_arcsec: float, fwhm_out_arcsec: float, samples_per_fwhm: float = 4.0) -> int:
    """Largest block that still samples the target resolution ``samples_per_fwhm`` times."""
    return max(1, int(fwhm_out_arcsec / (samples_per_fwhm * pixel_arcsec)))


def smoothing_sigma(fwhm_in_arcsec: float, fwhm_out_arcsec: float, block_arcsec: float) -> float:
    """Sigma (arcsec) of the Gaussian that takes an image of resolution ``fwhm_in``, averaged in
    square blocks of side ``block_arcsec`` (a box of variance block^2 / 12 per axis), to the
    Gaussian resolution ``fwhm_out`` (variances add).

    Raises
    ------
    AnchorFailed
        If the input is already as coarse as the target.
    """
    var = (fwhm_out_arcsec * FWHM_TO_SIGMA) ** 2 - (fwhm_in_arcsec * FWHM_TO_SIGMA) ** 2 - block_arcsec**2 / 12.0
    if var <= 0:
        raise AnchorFailed(
            f'resolution {fwhm_in_arcsec:.2f}" (in {block_arcsec:.2f}" blocks) is not finer than '
            f'the target {fwhm_out_arcsec:.2f}"'
        )
    return math.sqrt(var)


def smooth_to(
    image: np.ndarray, pixel_arcsec: float, fwhm_in_arcsec: float, fwhm_out_arcsec: float, min_weight: float = 0.9
) -> np.ndarray:
    """Convolve a (block-averaged) image to a Gaussian resolution, NaN-aware.

    Normalised convolution: ``G * (image where finite) / G * (finite)``, with the Gaussian
    ``G`` of :func:`smoothing_sigma` (the input resolution is treated as Gaussian: at the
    several-arcsec resolutions of anchoring a JWST PSF's wings carry too little power to
    matter). Pixels where the finite fraction under the kernel is below ``min_weight`` are NaN:
    holes and edges do not grow beyond the kernel's reach, and no value there is made up.

    Parameters
    ----------
    image : numpy.ndarray, shape (ny, nx)
        MJy/sr; NaN where there are no data.
    pixel_arcsec : float
        Pixel side of ``image`` (the block side, for a block-averaged image).
    fwhm_in_arcsec, fwhm_out_arcsec : float
        Resolution of the input (before block averaging) and the target resolution.
    min_weight : float
        Fewest finite pixels under the kernel (weighted fraction).

    Returns
    -------
    numpy.ndarray
        float64, shape (ny, nx), MJy/sr at ``fwhm_out_arcsec``.
    """
    from scipy.ndimage import gaussian_filter

    sigma_px = smoothing_sigma(fwhm_in_arcsec, fwhm_out_arcsec, pixel_arcsec) / pixel_arcsec
    good = np.isfinite(image)
    num = gaussian_filter(np.where(good, image, 0.0), sigma_px, mode="constant", cval=0.0, truncate=4.0)
    den = gaussian_filter(good.astype(np.float64), sigma_px, mode="constant", cval=0.0, truncate=4.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den >= min_weight, num / den, np.nan)


# -- the reference image's own zero ----------------------------------------------------------
@dataclass
class SkyLevel:
    """Zero level of a wide-field reference image, from its pixels beyond ``radius_arcsec``."""

    level: float
    uncertainty: float
    n_pixels: int
    inner_half: float
    outer_half: float
    radius_arcsec: float

    def as_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def sky_level(
    image: np.ndarray,
    radius_map_arcsec: np.ndarray,
    radius_arcsec: float,
    beam_fwhm_arcsec: float,
    pixel_arcsec: float,
    min_pixels: int = 1000,
    clip_sigma: float = 3.0,
) -> SkyLevel:
    """Sigma-clipped median of a reference image beyond a radius from the galaxy.

    Parameters
    ----------
    image : numpy.ndarray, shape (ny, nx)
        The reference image, MJy/sr (NaN: no data).
    radius_map_arcsec : numpy.ndarray, shape (ny, nx)
        Distance of each pixel from the target centre, arcsec.
    radius_arcsec : float
        Pixels farther than this are sky.
    beam_fwhm_arcsec, pixel_arcsec : float
        The image's beam and pixel: independent samples per pixel ~ pixel^2 / (1.13 FWHM^2).
    min_pixels : int
        Fewest sky pixels.
    clip_sigma : float
        Clipping of sources and noise spikes (astropy ``sigma_clipped_stats``, 10 iterations).

    Returns
    -------
    SkyLevel
        ``level`` (MJy/sr) and ``uncertainty``: the statistical error of the median (per
        independent beam) combined with half the difference between the inner and the outer half
        of the sky pixels (by radius), which is what galaxy light still left at the inner edge
        or a gradient would make it.

    Raises
    ------
    AnchorFailed
        Fewer than ``min_pixels`` finite pixels beyond the radius.
    """
    from astropy.stats import sigma_clipped_stats

    sky = (radius_map_arcsec > radius_arcsec) & np.isfinite(image)
    n = int(sky.sum())
    if n < min_pixels:
        raise AnchorFailed(
            f'only {n} pixels of sky beyond {radius_arcsec:.0f}" of the target (need {min_pixels}): '
            "the image is not wide enough, or lower the sky radius"
        )
    values, r = image[sky], radius_map_arcsec[sky]
    _, med, std = sigma_clipped_stats(values, sigma=clip_sigma, maxiters=10)
    split = np.median(r)
    _, inner, _ = sigma_clipped_stats(values[r <= split], sigma=clip_sigma, maxiters=10)
    _, outer, _ = sigma_clipped_stats(values[r > split], sigma=clip_sigma, maxiters=10)
    beams = max(1.0, n * pixel_arcsec**2 / (1.1331 * beam_fwhm_arcsec**2))
    stat = 1.2533 * float(std) / math.sqrt(beams)
    return SkyLevel(
        float(med), math.hypot(stat, 0.5 * float(inner - outer)), n, float(inner), float(outer), float(radius_arcsec)
    )


# -- the binned fit --------------------------------------------------------------------------
@dataclass
class Fit:
    """The binned linear relation ``y = slope * x + intercept`` between two images.

    ``offset`` is the level of the image being anchored where the other is zero (MJy/sr, in its
    units): ``-intercept / slope`` when it is ``x`` (the external fit: the JWST band binned, the
    wide-field image's medians), ``intercept`` when it is ``y`` (the internal fit: the anchored
    reference band binned, it is the less noisy one). Subtracting it puts the image on the
    other's zero.
    """

    slope: float
    intercept: float
    offset: float
    uncertainty: float
    bins: np.ndarray = field(repr=False)  # (nbins, 4): centre, median y, scatter of the median, count
    used: np.ndarray = field(repr=False)  # (nbins,) bool: kept by the clipping
    range: tuple[float, float] = (0.0, 0.0)
    n_pixels: int = 0
    curvature_shift: float = 0.0
    bootstrap: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def as_dict(self) -> dict:
        return {
            "slope": self.slope,
            "intercept": self.intercept,
            "offset": self.offset,
            "uncertainty": self.uncertainty,
            "range": list(self.range),
            "n_pixels": self.n_pixels,
            "n_bins": int(self.used.size),
            "n_bins_used": int(self.used.sum()),
            "curvature_shift": self.curvature_shift,
        }


def fit_range(x: np.ndarray, lo: float, hi: float, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The intensity range of the fit: ``(lo, hi)`` when given (hi > lo), else the percentiles
    of ``x`` (the faint part of the overlap: the paper fits "a range of intensities close to
    zero", adjusted per source and band)."""
    if hi > lo:
        return float(lo), float(hi)
    a, b = np.percentile(x, percentiles)
    return float(a), float(b)


def _binned(x, y, edges, min_count):
    idx = np.digitize(x, edges) - 1
    nb = edges.size - 1
    ok = (idx >= 0) & (idx < nb)
    idx, yv = idx[ok], y[ok]
    order = np.argsort(idx, kind="stable")
    idx, yv = idx[order], yv[order]
    starts = np.searchsorted(idx, np.arange(nb + 1))
    out = np.full((nb, 4), np.nan)
    out[:, 0] = 0.5 * (edges[:-1] + edges[1:])
    for b in range(nb):
        v = yv[starts[b] : starts[b + 1]]
        out[b, 3] = v.size
        if v.size >= min_count:
            med = np.median(v)
            out[b, 1] = med
            out[b, 2] = 1.2533 * 1.4826 * np.median(np.abs(v - med)) / math.sqrt(v.size)
    return out


def _clipped_line(xc, yc, clip_sigma, rounds):
    used = np.isfinite(yc)
    slope = intercept = float("nan")
    for _ in range(rounds + 1):
        if used.sum() < 3:
            break
        slope, intercept = np.polyfit(xc[used], yc[used], 1)
        resid = yc - (slope * xc + intercept)
        s = np.std(resid[used])
        keep = np.isfinite(yc) & (np.abs(resid) <= clip_sigma * s) if s > 0 else used
        if keep.sum() < 3 or np.array_equal(keep, used):
            break
        used = keep
    return float(slope), float(intercept), used


def binned_fit(
    x: np.ndarray,
    y: np.ndarray,
    lo: float,
    hi: float,
    n_bins: int = 15,
    min_per_bin: int = 20,
    min_bins: int = 5,
    clip_sigma: float = 3.0,
    clip_rounds: int = 3,
    blocks: np.ndarray | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    anchored: str = "x",
    extrapolation_fraction: float = 0.0,
    model: str = "line",
) -> Fit:
    """Fit ``y = slope * x + intercept`` to the medians of ``y`` in bins of ``x``.

    The paper's anchoring fit (section 3.9, Figure 8): bins of the image being anchored
    (``x``) over a range of low intensities, the median of the other (``y``) in each (medians
    down-weight regions of unusual band ratio), an ordinary least-squares line through the
    bin medians with ``clip_rounds`` rounds of ``clip_sigma`` clipping. The slope (the band
    ratio) is a nuisance. Binning the less noisy image avoids the bias noise in the binned
    variable gives the slope (regression dilution).

    Parameters
    ----------
    x, y : numpy.ndarray, shape (n,)
        Matched pixels of the two images at a common resolution (finite), MJy/sr.
    lo, hi : float
        Intensity range of ``x`` that is fitted.
    n_bins : int
        Bins across the range (equal widths).
    min_per_bin : int
        Fewest pixels for a bin's median to count.
    min_bins : int
        Fewest bins (with enough pixels, after the clipping) for a fit.
    clip_sigma, clip_rounds : float, int
        Iterative clipping of the bin medians about the line.
    blocks : numpy.ndarray of int, shape (n,), optional
        Spatial block of each pixel (e.g. 4 x 4 beams): the uncertainty is a bootstrap over
        blocks, which keeps the correlation of neighbouring pixels and of whole regions with
        an unusual band ratio. None: every pixel its own block.
    n_bootstrap : int
        Bootstrap resamplings (0: no uncertainty, NaN).
    seed : int
        Seed of the bootstrap.
    anchored : {"x", "y"}
        Which image is being anchored: ``"x"``, offset = ``-intercept / slope`` (where the line
        crosses ``y = 0``, in ``x``'s units); ``"y"``, offset = ``intercept`` (``y`` at ``x = 0``).
    extrapolation_fraction : float
        Systematic error of the extrapolation from the faint end of the range to zero, as a
        fraction of the change the line predicts over that stretch (in the anchored image's
        units): the relation is only seen where there are data, and band ratios drift as the
        stellar and dust contributions change (measured on the synthetic galaxies: 9-16%).
    model : {"line", "curve"}
        ``"line"``: the offset is the line's (the paper's). ``"curve"``, for ``anchored="y"``
        only: where the quadratic through the kept bins curves significantly, its value at
        ``x = 0`` is the offset (a band ratio that drifts with intensity, carried to zero), its
        formal error joins the statistical one, and the line's offset stays in the uncertainty
        as ``curvature_shift`` (now the line minus the curve).

    Returns
    -------
    Fit
        ``uncertainty``: the standard deviation of the bootstrap offsets or the formal error of
        the line through the bins, whichever is larger (NaN without a bootstrap), combined
        with ``curvature_shift`` and the extrapolation systematic (``extrapolation``);
        ``curvature_shift`` how far a quadratic through the kept bins moves the offset, when
        its curvature is significant (3 sigma; else 0): the linearity test of the caller.

    Raises
    ------
    AnchorFailed
        Too few pixels or bins in the range, or a slope that is not positive.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    blocks = np.arange(ok.sum()) if blocks is None else np.asarray(blocks)[ok]
    if not hi > lo:
        raise AnchorFailed(f"empty intensity range [{lo:.3g}, {hi:.3g}] MJy/sr")
    edges = np.linspace(lo, hi, n_bins + 1)
    inside = (x >= lo) & (x < hi)
    n_in = int(inside.sum())
    if n_in < min_per_bin * min_bins:
        raise AnchorFailed(f"{n_in} pixels in the range [{lo:.3g}, {hi:.3g}] MJy/sr (need {min_per_bin * min_bins})")
    bins = _binned(x, y, edges, min_per_bin)
    slope, intercept, used = _clipped_line(bins[:, 0], bins[:, 1], clip_sigma, clip_rounds)
    if used.sum() < min_bins:
        raise AnchorFailed(
            f"{int(used.sum())} bins with {min_per_bin}+ pixels in [{lo:.3g}, {hi:.3g}] MJy/sr (need {min_bins})"
        )
    if not slope > 0:
        raise AnchorFailed(f"the binned relation has slope {slope:.3g} (not positive): no linear relation to anchor on")

    def solve(s, i):
        return -i / s if anchored == "x" else i

    offset = solve(slope, intercept)
    # linearity: the offset a quadratic through the kept bins would give
    xc, yc = bins[used, 0], bins[used, 1]
    curvature = 0.0
    curve_error = 0.0
    curve = None  # the quadratic's coefficients, where it gives the offset
    if model not in ("line", "curve") or (model == "curve" and anchored != "y"):
        raise ValueError(f"model {model!r}: 'line', or 'curve' with anchored='y'")
    if used.sum() >= 5:
        (c2, c1, c0), cov2 = np.polyfit(xc, yc, 2, cov=True)
        if abs(c2) > 3 * math.sqrt(max(cov2[0, 0], 0.0)):  # significant curvature
            if anchored == "y" and model == "curve":
                # the curve's value at zero is the offset; the line's is the systematic
                curvature, offset = float(offset - c0), float(c0)
                curve_error = math.sqrt(max(cov2[2, 2], 0.0))
                curve = (float(c2), float(c1), float(c0))
            elif anchored == "y":
                curvature = float(c0 - offset)
            else:
                roots = np.roots([c2, c1, c0])
                real = roots[np.isreal(roots)].real
                # the zero crossing nearest the linear one (none: the curve never reaches zero)
                curvature = float(real[np.argmin(np.abs(real - offset))] - offset) if real.size else float("inf")
    # block bootstrap
    boots = []
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        sel = inside
        xs, ys, bs = x[sel], y[sel], blocks[sel]
        ub, inv = np.unique(bs, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        starts = np.searchsorted(inv[order], np.arange(ub.size + 1))
        for _ in range(n_bootstrap):
            pick = rng.integers(0, ub.size, ub.size)
            idx = np.concatenate([order[starts[b] : starts[b + 1]] for b in pick]) if ub.size else np.zeros(0, int)
            bb = _binned(xs[idx], ys[idx], edges, min_per_bin)
            s, i, u = _clipped_line(bb[:, 0], bb[:, 1], clip_sigma, clip_rounds)
            if u.sum() >= min_bins and s > 0:
                boots.append(solve(s, i))
    boots = np.asarray(boots)
    unc = float(np.std(boots)) if boots.size >= 10 else float("nan")
    # the formal error of the line through the kept bins (their scatter about it), propagated
    # to -intercept/slope: the larger of the two is reported (the bootstrap of medians alone
    # came out ~10% low in coverage tests)
    if used.sum() > 3:
        (_, _), cov = np.polyfit(xc, yc, 1, cov=True)
        var = (cov[1, 1] + offset**2 * cov[0, 0] + 2 * offset * cov[0, 1]) / slope**2 if anchored == "x" else cov[1, 1]
        unc = max(unc, math.sqrt(max(var, 0.0)), curve_error) if np.isfinite(unc) else unc
    # a significant curvature is a systematic error of the extrapolation to zero
    unc = math.hypot(unc, curvature) if np.isfinite(unc) else unc
    stretch = max(lo - offset, 0.0) if anchored == "x" else slope * max(lo, 0.0)
    extrapolation = extrapolation_fraction * stretch
    unc = math.hypot(unc, extrapolation) if np.isfinite(unc) else unc
    split = _split_shift(xc, yc, solve)
    fit = Fit(
        float(slope), float(intercept), float(offset), unc, bins, used, (float(lo), float(hi)), n_in, curvature, boots
    )
    fit.split_shift = split
    fit.extrapolation = extrapolation
    fit.curve = curve
    return fit


def _split_shift(xc, yc, solve) -> float:
    """Half the difference between the offsets of lines through the lower and the upper half
    of the kept bins: how much the local slope changes across the range, carried to zero."""
    n = xc.size
    if n < 6:
        return float("nan")
    h = n // 2
    (s1, i1), (s2, i2) = np.polyfit(xc[:h], yc[:h], 1), np.polyfit(xc[h:], yc[h:], 1)
    if not (s1 > 0 and s2 > 0):
        return float("inf")
    return 0.5 * float(solve(s1, i1) - solve(s2, i2))
