"""External inputs of a release, generated from the same true sky as the synthetic program.

A PHANGS-style release needs three things from outside JWST (``pipeline.md`` items 9-11):

- wide-field, low-resolution images (Spitzer IRAC1/IRAC4, WISE1/WISE3, and MIPS24 as a direct
  reference for F2100W) to anchor the absolute background level of the mosaics (§3.9). Here
  each survey sees the true sky of one JWST proxy band, convolved to the survey's Gaussian
  beam, times a slope, plus a constant background and white noise. Slope and background are
  drawn per target and recorded: the anchoring step must give the background back;
- an HST-like astrometric reference catalogue (red supergiants / AGB stars) for absolute
  astrometry (§3.8): the stellar point sources of the sky model, at RA/Dec perturbed by a known
  Gaussian position error;
- two PSF models per JWST band (§3.10): the Gaussian the synthetic sky is rendered with (the
  one the mosaics really have) and a diffraction PSF computed with poppy through a JWST-like
  segmented pupil (for measuring kernels of a realistic PSF).

Output layout under OUTDIR::

    external/<target>_<survey>.fits   survey image (MJy/sr), north-up TAN WCS, 24' x 24'
    external/<target>_refcat.ecsv     reference catalogue (RA, DEC, RA_TRUE, DEC_TRUE, MAG, ...)
    psf/psf_<band>.fits               the synthetic sky's PSF (Gaussian, Table 2 FWHM), oversampled
    psf/jwst-like/psf_<band>.fits     a diffraction PSF through a JWST-like pupil (poppy), oversampled

Every random draw comes from the generator passed in (seeded by the caller; never the global
state), so the same seed writes byte-identical files. Every file is written atomically.

Conventions: angles in degrees on the sky, offsets and sizes in arcsec with +x to the east and
+y to the north (gnomonic, as :func:`processing.simulate.sky.tangent_offsets`), surface
brightness in MJy/sr, images indexed ``[row, column]`` = ``[y, x]`` (FITS order).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from processing.common.psf import gaussian, measure_fwhm
from processing.simulate.detectors import FILTERS
from processing.simulate.sky import (
    _FWHM_TO_SIGMA,
    DUST_SED,
    DUSTY_CLUSTER,
    RED_SUPERGIANT,
    STELLAR,
    STELLAR_SED,
    Galaxy,
    _bg_components,
    point_source_sed,
)

log = logging.getLogger(__name__)

#: Wide-field surveys: Gaussian beam FWHM and pixel scale (arcsec), the JWST bands whose true sky
#: each sees (first usable one wins), and the white-noise RMS per survey pixel (MJy/sr).
SURVEYS: dict[str, dict] = {
    "irac1": {"fwhm": 1.7, "pixel": 0.75, "proxy": ("F360M", "F300M"), "noise": 0.01},
    "irac4": {"fwhm": 2.0, "pixel": 0.75, "proxy": ("F770W",), "noise": 0.03},
    "wise1": {"fwhm": 6.1, "pixel": 1.375, "proxy": ("F335M",), "noise": 0.01},
    "wise3": {"fwhm": 6.5, "pixel": 1.375, "proxy": ("F1130W",), "noise": 0.05},
    # Spitzer MIPS 24 um: a direct reference for F2100W (the 21-24 um dust continuum)
    "mips24": {"fwhm": 6.0, "pixel": 1.5, "proxy": ("F2100W",), "noise": 0.04},
}
#: Side of the (square) survey images in arcmin; the JWST footprint is ~2'. Wide, as the real
#: ones are: the diffuse dust (scale length 70") still adds ~0.1 MJy/sr at 4' and 0.002 at 9',
#: and an anchoring reference needs galaxy-free sky to define its own zero.
FIELD_ARCMIN = 24.0
#: Central part (arcmin) convolved exactly on a fine grid; outside it the extended emission is
#: smooth on beam scales (scale lengths >= 35") and sampled at the pixel centres (error ~1e-4
#: of the local intensity), the compact components still exactly.
EXACT_FIELD_ARCMIN = 8.0
#: Ranges of the per-target slope (dimensionless) and background (MJy/sr) of a survey image.
SLOPE_RANGE = (0.9, 1.1)
BACKGROUND_RANGE = (-0.2, 0.5)
#: Sampling of the fine grid on which the sky is convolved: at least this many points per beam FWHM.
SAMPLES_PER_FWHM = 6
#: Beam truncation of the convolution, in beam sigmas.
BEAM_TRUNCATE = 5.0

#: 1 MJy/sr * arcsec^2 in Jy, and the AB zero point (Jy).
_MJYSR_ARCSEC2_JY = 1e6 * (np.pi / 180.0 / 3600.0) ** 2
_AB_ZERO_JY = 3631.0

#: JWST-like pupil for the PSF models (metres).
PUPIL_FLAT_TO_FLAT = 1.32
PUPIL_GAP = 0.007
PUPIL_DIAMETER = 6.7  # side of the pupil array: the segments span 6.63 m x 6.12 m
SECONDARY_RADIUS = 0.37
STRUT_WIDTH = 0.1
#: Pupil sampling (pixels across PUPIL_DIAMETER) and the wavelengths of the polychromatic PSF,
#: as fractions of the band's central wavelength (equal weights: a 20%-wide flat band).
PUPIL_NPIX = 512
PSF_WAVELENGTH_FRACTIONS = (0.9, 1.0, 1.1)
#: A PSF's measured FWHM further than this (fractionally) from Table 2 is logged as a warning.
PSF_FWHM_TOLERANCE = 0.25


# -- geometry --------------------------------------------------------------------------------
def offsets_to_radec(x_arcsec, y_arcsec, ra0: float, dec0: float):
    """Inverse of :func:`processing.simulate.sky.tangent_offsets` (gnomonic / TAN).

    Parameters
    ----------
    x_arcsec, y_arcsec : float or array_like
        Tangent-plane offsets in arcsec from (ra0, dec0); +x to the east, +y to the north.
        Any (broadcastable) shape.
    ra0, dec0 : float
        Tangent point, degrees.

    Returns
    -------
    ra, dec : numpy.ndarray
        Degrees, shape of the broadcast inputs; RA in [0, 360).
    """
    xi = np.deg2rad(np.asarray(x_arcsec, float) / 3600.0)
    eta = np.deg2rad(np.asarray(y_arcsec, float) / 3600.0)
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    denom = np.cos(d0) - eta * np.sin(d0)
    ra = a0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, denom))
    return np.rad2deg(ra) % 360.0, np.rad2deg(dec)


def proxy_band(survey: str) -> str:
    """JWST band whose true sky ``survey`` sees: the first of its candidates with a usable SED.

    A band is usable when the sky model has both its spectra (STELLAR_SED, DUST_SED, positive)
    and its PSF (detectors.FILTERS).
    """
    for band in SURVEYS[survey]["proxy"]:
        if STELLAR_SED.get(band, 0) > 0 and DUST_SED.get(band, 0) > 0 and band in FILTERS:
            return band
    raise KeyError(f"no usable proxy band for survey {survey!r}: {SURVEYS[survey]['proxy']}")


def survey_grid(survey: str, ra0: float, dec0: float, field_arcmin: float = FIELD_ARCMIN):
    """North-up TAN grid of a survey image centred on (ra0, dec0).

    Returns
    -------
    wcs : astropy.wcs.WCS
        CRVAL = (ra0, dec0) at the image centre, CDELT = (-pixel, +pixel)/3600 deg.
    shape : tuple of int
        (ny, nx) = (n, n) with n = round(field / pixel).
    """
    from astropy.wcs import WCS

    pix = SURVEYS[survey]["pixel"]
    n = int(round(field_arcmin * 60.0 / pix))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [(n + 1) / 2.0, (n + 1) / 2.0]
    w.wcs.cdelt = [-pix / 3600.0, pix / 3600.0]
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w, (n, n)


def grid_offsets(n: int, pixel_arcsec: float, subsample: int = 1, pad: int = 0):
    """Tangent-plane offsets (arcsec) of the pixel centres of a :func:`survey_grid` image.

    Parameters
    ----------
    n : int
        Survey pixels per side.
    pixel_arcsec : float
        Survey pixel scale.
    subsample : int
        Fine points per survey pixel and axis (k): fine point ``f`` lies in survey pixel
        ``(f - pad) // k``.
    pad : int
        Extra fine points on each side.

    Returns
    -------
    x, y : numpy.ndarray
        1-D, length ``n * k + 2 * pad``: east offsets of the columns (decreasing: north-up
        images have east to the left) and north offsets of the rows (increasing).
    """
    f = np.arange(n * subsample + 2 * pad, dtype=float)
    p = (f - pad + 0.5) / subsample - 0.5 - (n - 1) / 2.0
    return -p * pixel_arcsec, p * pixel_arcsec


# -- the true sky seen through a wide beam ---------------------------------------------------
def split_sky(galaxy: Galaxy, band: str):
    """Split the sky model into its extended part and its compact (Gaussian) components.

    ``extended.surface_brightness_xy(band, x, y)`` plus the components added with
    :func:`processing.simulate.sky.add_gaussians` equals ``galaxy.surface_brightness_xy(band,
    x, y)`` (to the stamp truncation of ``add_gaussians``): the compact part is the nucleus,
    the knots, the point sources and the background galaxies, exactly as ``sky.py`` builds them.

    Returns
    -------
    extended : Galaxy
        A copy without knots, stars, background galaxies and nucleus (disk, bulge, arms and
        diffuse dust remain: smooth on arcsec scales, except in the inner ~2" where the faded
        spiral arms wind at sub-arcsec scales).
    comps : list of tuple
        ``(x0, y0, var_x, var_y, peak)``: centre (arcsec), variances (arcsec^2) and peak
        (MJy/sr) of each compact component as seen through ``band``'s PSF.
    """
    psf_var = (FILTERS[band]["fwhm"] * _FWHM_TO_SIGMA) ** 2
    s_star, s_dust = STELLAR_SED[band], DUST_SED[band]
    comps = []
    nuc_flux = galaxy.nucleus_peak * 2 * np.pi * FILTERS["F200W"]["fwhm"] ** 2 * _FWHM_TO_SIGMA**2
    comps.append((0.0, 0.0, psf_var, psf_var, (s_star + 0.5 * s_dust) * nuc_flux / (2 * np.pi * psf_var)))
    for kx, ky, ks, kp in galaxy.knots:
        var = ks**2 + psf_var
        comps.append((kx, ky, var, var, s_dust * kp * ks**2 / var))
    colour = point_source_sed(galaxy.star_colour, band)
    for (sx, sy, flux), c in zip(galaxy.stars, colour):
        comps.append((sx, sy, psf_var, psf_var, c * flux / (2 * np.pi * psf_var)))
    comps += _bg_components(galaxy.bg_galaxies, 0.3 * (s_star + s_dust), math.sqrt(psf_var))
    extended = dataclasses.replace(
        galaxy,
        nucleus_peak=0.0,
        knots=np.zeros((0, 4)),
        stars=np.zeros((0, 3)),
        star_colour=np.zeros(0),
        bg_galaxies=np.zeros((0, 5)),
    )
    return extended, [tuple(float(v) for v in c) for c in comps]


def broaden(comps: list, var: float) -> list:
    """Convolve Gaussian components with a circular Gaussian of variance ``var`` (arcsec^2).

    Flux (peak * 2 pi sqrt(var_x var_y)) is conserved.
    """
    out = []
    for x0, y0, vx, vy, peak in comps:
        vx2, vy2 = vx + var, vy + var
        out.append((x0, y0, vx2, vy2, peak * math.sqrt(vx * vy / (vx2 * vy2))))
    return out


def _add_pixel_averaged(
    out: np.ndarray, xs: np.ndarray, ys: np.ndarray, pixel: float, comps: list, nsigma: float = 7.0
) -> None:
    """Add axis-aligned Gaussians to ``out``, averaged exactly over square pixels.

    Parameters
    ----------
    out : numpy.ndarray
        Shape (len(ys), len(xs)), MJy/sr; modified in place.
    xs, ys : numpy.ndarray
        Offsets (arcsec) of the pixel centres of the columns and rows (uniformly spaced by
        ``pixel``, either direction).
    pixel : float
        Pixel side, arcsec.
    comps : list of tuple
        ``(x0, y0, var_x, var_y, peak)`` as in :func:`split_sky`.
    nsigma : float
        Half-size of each Gaussian's stamp, in its sigmas.

    Notes
    -----
    The mean of a Gaussian over a pixel is separable: ``peak * Ax * Ay`` with
    ``Ax = sqrt(2 pi) sigma_x / pixel * (Phi((x_hi - x0) / sigma_x) - Phi((x_lo - x0) / sigma_x))``.
    Exact, unlike sampling a fine grid (whose midpoint rule is off by ~pixel^2 / (24 sigma^2)).
    """
    from scipy.special import ndtr

    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    for x0, y0, vx, vy, peak in comps:
        sx, sy = math.sqrt(vx), math.sqrt(vy)
        ci, cj = (x0 - xs[0]) / dx, (y0 - ys[0]) / dy
        ri, rj = int(np.ceil(nsigma * sx / pixel)) + 1, int(np.ceil(nsigma * sy / pixel)) + 1
        i0, i1 = max(int(round(ci)) - ri, 0), min(int(round(ci)) + ri + 1, xs.size)
        j0, j1 = max(int(round(cj)) - rj, 0), min(int(round(cj)) + rj + 1, ys.size)
        if i0 >= i1 or j0 >= j1:
            continue
        u = (xs[i0:i1] - x0) / sx
        ax = (ndtr(u + 0.5 * pixel / sx) - ndtr(u - 0.5 * pixel / sx)) * (math.sqrt(2 * np.pi) * sx / pixel)
        v = (ys[j0:j1] - y0) / sy
        ay = (ndtr(v + 0.5 * pixel / sy) - ndtr(v - 0.5 * pixel / sy)) * (math.sqrt(2 * np.pi) * sy / pixel)
        out[j0:j1, i0:i1] += peak * np.outer(ay, ax)


def convolved_sky(
    galaxy: Galaxy,
    band: str,
    fwhm_arcsec: float,
    pixel_arcsec: float,
    n: int,
    samples_per_fwhm: float = SAMPLES_PER_FWHM,
    rows_per_chunk: int = 256,
    exact_arcmin: float = EXACT_FIELD_ARCMIN,
) -> np.ndarray:
    """True sky of ``band`` convolved with a Gaussian beam and averaged into survey pixels.

    The extended part of the sky (:func:`split_sky`) is evaluated on a fine grid (``k`` x ``k``
    points per survey pixel, ``k`` the smallest integer giving at least ``samples_per_fwhm``
    points per beam FWHM, padded by the beam's reach so the edges are exact), convolved with
    the beam (``scipy.ndimage.gaussian_filter``) and averaged in k x k blocks. The compact
    components, JWST-PSF sized (0.05-0.3": far below the fine grid's sampling, so they are not
    convolved numerically), are convolved analytically (variances add) and averaged exactly
    over the survey pixels (:func:`_add_pixel_averaged`).

    Accuracy (against every component convolved numerically at JWST mosaic sampling): 0.1-0.3%
    at the bright centre, where the spiral arms wind at sub-arcsec scales, and < 0.002 MJy/sr
    below 2 MJy/sr.

    Parameters
    ----------
    galaxy : Galaxy
        The sky model.
    band : str
        JWST band of the true sky (its SEDs and PSF).
    fwhm_arcsec, pixel_arcsec : float
        Beam FWHM and survey pixel scale (arcsec).
    n : int
        Survey pixels per side; the grid is :func:`survey_grid`'s (centred on the galaxy).
    samples_per_fwhm : float
        Minimum fine-grid points per beam FWHM.
    rows_per_chunk : int
        Fine rows evaluated at once (bounds the memory of the sky evaluation).
    exact_arcmin : float
        Side of the central part convolved on the fine grid; outside it the extended part is
        sampled at the survey pixel centres (smooth there: see EXACT_FIELD_ARCMIN).

    Returns
    -------
    numpy.ndarray
        float64, shape (n, n), MJy/sr.
    """
    from scipy.ndimage import gaussian_filter

    k = max(1, int(np.ceil(pixel_arcsec * samples_per_fwhm / fwhm_arcsec)))
    step = pixel_arcsec / k
    beam_sigma = fwhm_arcsec * _FWHM_TO_SIGMA
    pad = int(np.ceil(BEAM_TRUNCATE * beam_sigma / step)) + 1
    # the central n_in x n_in pixels (same parity as n: the grids coincide) exactly
    n_in = min(n, int(np.ceil(exact_arcmin * 60.0 / pixel_arcsec)))
    n_in += (n - n_in) % 2
    edge = (n - n_in) // 2
    extended, comps = split_sky(galaxy, band)
    out = np.empty((n, n))
    if edge:
        xo, yo = grid_offsets(n, pixel_arcsec)
        for j0 in range(0, n, rows_per_chunk):
            yy, xx = np.meshgrid(yo[j0 : j0 + rows_per_chunk], xo, indexing="ij")
            out[j0 : j0 + rows_per_chunk] = extended.surface_brightness_xy(band, xx, yy)
    xs, ys = grid_offsets(n_in, pixel_arcsec, k, pad)
    fine = np.empty((ys.size, xs.size))
    for j0 in range(0, ys.size, rows_per_chunk):
        yy, xx = np.meshgrid(ys[j0 : j0 + rows_per_chunk], xs, indexing="ij")
        fine[j0 : j0 + rows_per_chunk] = extended.surface_brightness_xy(band, xx, yy)
    fine = gaussian_filter(fine, beam_sigma / step, mode="nearest", truncate=BEAM_TRUNCATE)
    out[edge : edge + n_in, edge : edge + n_in] = fine[pad:-pad, pad:-pad].reshape(n_in, k, n_in, k).mean(axis=(1, 3))
    del fine
    _add_pixel_averaged(out, *grid_offsets(n, pixel_arcsec), pixel_arcsec, broaden(comps, beam_sigma**2))
    log.debug('convolved %s to %.2f" on a %dx%d fine grid (%.3f"/point)', band, fwhm_arcsec, ys.size, xs.size, step)
    return out


# -- 1. survey images ------------------------------------------------------------------------
def write_external_images(
    outdir: Path,
    name: str,
    galaxy: Galaxy,
    rng: np.random.Generator,
    surveys=("irac1", "irac4", "wise1", "wise3", "mips24"),
) -> dict:
    """Write the wide-field survey images of one target.

    Each image is ``slope * convolved_sky(proxy band) + background + noise`` on a
    FIELD_ARCMIN-wide north-up grid centred on the galaxy, with ``slope`` ~ U(SLOPE_RANGE), ``background``
    ~ U(BACKGROUND_RANGE) (MJy/sr) and white Gaussian noise of SURVEYS[survey]['noise'] MJy/sr,
    drawn from ``rng`` in that order, survey after survey.

    Parameters
    ----------
    outdir : Path
        Root of the program; files go to ``outdir/external/<name>_<survey>.fits``.
    name : str
        Target name.
    galaxy : Galaxy
        The target's true sky.
    rng : numpy.random.Generator
        Source of every random draw.
    surveys : sequence of str
        Keys of SURVEYS.

    Returns
    -------
    dict
        ``{survey: {"file" (relative to outdir), "proxy_band", "slope", "background_mjysr",
        "fwhm_arcsec", "pixel_arcsec", "noise_mjysr", "shape"}}``.
    """
    from astropy.io import fits

    from processing.fileio import atomic_path

    outdir = Path(outdir)
    truth = {}
    for survey in surveys:
        spec = SURVEYS[survey]
        band = proxy_band(survey)
        w, shape = survey_grid(survey, galaxy.ra, galaxy.dec)
        slope = float(rng.uniform(*SLOPE_RANGE))
        background = float(rng.uniform(*BACKGROUND_RANGE))
        noise = float(spec["noise"])
        sky = convolved_sky(galaxy, band, spec["fwhm"], spec["pixel"], shape[0])
        image = slope * sky + background + rng.normal(0.0, noise, shape)
        hdr = w.to_header()
        hdr["BUNIT"] = ("MJy/sr", "surface brightness")
        hdr["SURVEY"] = (survey, "simulated stand-in for this survey")
        hdr["FWHM"] = (spec["fwhm"], "[arcsec] Gaussian beam FWHM")
        hdr["PIXSCALE"] = (spec["pixel"], "[arcsec] pixel scale")
        hdr["PROXY"] = (band, "JWST band whose true sky this image sees")
        hdr["TARGET"] = name
        hdr["SIMULATD"] = (True, "simulated data")
        rel = f"external/{name}_{survey}.fits"
        with atomic_path(outdir / rel) as tmp:
            fits.PrimaryHDU(image.astype(np.float32), header=hdr).writeto(tmp, overwrite=True)
        truth[survey] = {
            "file": rel,
            "proxy_band": band,
            "slope": slope,
            "background_mjysr": background,
            "fwhm_arcsec": float(spec["fwhm"]),
            "pixel_arcsec": float(spec["pixel"]),
            "noise_mjysr": noise,
            "shape": list(shape),
        }
        log.info("%s %s: %s x %.3f + %.3f MJy/sr", name, survey, band, slope, background)
    return truth


# -- 2. astrometric reference catalogue ------------------------------------------------------
#: Per-axis catalogue position errors (mas): well-measured isolated stars, crowded or flagged
#: ones, extended clusters (centroid of a resolved source), faint catalogue-only detections.
REFCAT_ERROR_MAS = {"good": 5.0, "crowded": 40.0, "cluster": 30.0, "faint": 20.0}
#: Catalogue-only faint detections (not in the sky model), as a fraction of the red supergiants.
REFCAT_FAINT_FRACTION = 0.05
#: F814W - F200W (AB) of each point-source population, and their F555W - F814W colours (mean, sd).
_I_MINUS_K = {STELLAR: 0.3, DUSTY_CLUSTER: 0.0, RED_SUPERGIANT: 1.2}
_V_MINUS_I = {STELLAR: (0.8, 0.3), DUSTY_CLUSTER: (1.0, 0.4), RED_SUPERGIANT: (2.8, 0.4)}


def write_reference_catalog(outdir: Path, name: str, galaxy: Galaxy, rng: np.random.Generator) -> dict:
    """Write an HST/DOLPHOT-like astrometric reference catalogue of one target.

    Every point source of the sky model is in it (red supergiants and AGB stars, foreground
    stars, dusty clusters), with the DOLPHOT quality columns the paper's selection uses
    (section 3.8): most red supergiants pass the cuts; crowded or flagged ones, the clusters
    (extended: negative sharpness, blue colour) and the foreground stars (blue) do not, and
    their positions are worse, as in a real catalogue. Faint catalogue-only detections (not in
    the sky model, IN_SKY False, S/N < 10) are added. Each catalogue position is the true one
    moved by a Gaussian error (east, north; REFCAT_ERROR_MAS by kind); the true position is
    kept (RA_TRUE, DEC_TRUE).

    Parameters
    ----------
    outdir : Path
        Root of the program; the file is ``outdir/external/<name>_refcat.ecsv``.
    name : str
        Target name.
    galaxy : Galaxy
        The target's true sky.
    rng : numpy.random.Generator
        Draws the faint extras, the quality columns and the position errors.

    Returns
    -------
    dict
        ``{"file", "n_sources", "n_in_sky", "n_pass_cuts", "trgb_f814w", "position_error_mas"}``.

    Notes
    -----
    Columns: ID, RA, DEC (catalogue, deg), RA_TRUE, DEC_TRUE (deg), KIND (rsg, star, cluster,
    faint), MAG_F814W (Vega-like), COLOR_F555W_F814W (mag), SNR_F814W, CROWD_F814W (mag),
    SHARP_F814W, ROUND_F814W, FLAG_F814W, OBJTYPE, FLUX_F200W (MJy/sr * arcsec^2; 0 for the
    extras), POS_ERR_MAS (per axis), IN_SKY. The meta holds the TRGB magnitude (red supergiants
    sit 3-5 mag above it). tweakreg's ``abs_refcat`` reads RA and DEC.
    """
    from astropy import units as u
    from astropy.table import Table

    from processing.fileio import atomic_path

    x, y, flux = np.asarray(galaxy.stars, float).reshape(-1, 3).T
    colour = np.asarray(galaxy.star_colour, int)
    n_rsg = int(np.count_nonzero(colour == RED_SUPERGIANT))
    n_faint = int(round(REFCAT_FAINT_FRACTION * n_rsg))
    n_sky = x.size
    # faint extras follow the red supergiants' positions (a random subset, moved by ~2")
    pick = rng.integers(0, max(n_sky, 1), n_faint) if n_sky else np.zeros(0, int)
    fx = x[pick] + rng.normal(0, 2.0, n_faint)
    fy = y[pick] + rng.normal(0, 2.0, n_faint)
    m200 = -2.5 * np.log10(np.maximum(flux, 1e-12) * _MJYSR_ARCSEC2_JY / _AB_ZERO_JY)
    m814 = m200 + np.array([_I_MINUS_K[c] for c in colour])
    rsg = colour == RED_SUPERGIANT
    trgb = float(np.median(m814[rsg]) + 4.0) if rsg.any() else 25.0
    m814_faint = trgb - rng.uniform(0.0, 1.5, n_faint)
    vi = np.array([rng.normal(*_V_MINUS_I[c]) for c in colour])
    # S/N ~ flux, the median red supergiant at 80
    snr = 80.0 * 10 ** (-0.4 * (m814 - (np.median(m814[rsg]) if rsg.any() else 20.0)))
    crowded = rng.random(n_sky) < 0.15
    crowd = np.where(crowded, rng.uniform(0.02, 0.3, n_sky), rng.exponential(0.002, n_sky).clip(0, 0.0099))
    flag = np.where(rng.random(n_sky) < 0.05, 2, 0)
    cluster = colour == DUSTY_CLUSTER
    sharp = np.where(cluster, rng.normal(-0.15, 0.05, n_sky), rng.normal(-0.007, 0.005, n_sky))
    rnd = np.where(cluster, rng.normal(0.3, 0.2, n_sky), rng.normal(0.1, 0.08, n_sky))
    kind = np.where(cluster, "cluster", np.where(rsg, "rsg", "star")).astype("<U7")
    err = np.where(
        cluster,
        REFCAT_ERROR_MAS["cluster"],
        np.where(crowded | (flag > 0), REFCAT_ERROR_MAS["crowded"], REFCAT_ERROR_MAS["good"]),
    )
    # the extras
    x, y = np.concatenate([x, fx]), np.concatenate([y, fy])
    m814, vi = np.concatenate([m814, m814_faint]), np.concatenate([vi, rng.normal(2.5, 0.6, n_faint)])
    snr = np.concatenate([snr, rng.uniform(3.0, 9.5, n_faint)])
    crowd = np.concatenate([crowd, rng.uniform(0.0, 0.2, n_faint)])
    flag = np.concatenate([flag, np.zeros(n_faint, int)])
    sharp = np.concatenate([sharp, rng.normal(-0.01, 0.03, n_faint)])
    rnd = np.concatenate([rnd, rng.normal(0.1, 0.2, n_faint)])
    kind = np.concatenate([kind, np.full(n_faint, "faint")])
    err = np.concatenate([err, np.full(n_faint, REFCAT_ERROR_MAS["faint"])])
    flux = np.concatenate([flux, np.zeros(n_faint)])
    in_sky = np.arange(x.size) < n_sky
    dx, dy = rng.normal(0.0, 1.0, (2, x.size)) * err / 1000.0
    ra_true, dec_true = offsets_to_radec(x, y, galaxy.ra, galaxy.dec)
    ra, dec = offsets_to_radec(x + dx, y + dy, galaxy.ra, galaxy.dec)
    t = Table()
    t["ID"] = np.arange(1, x.size + 1, dtype=np.int64)
    t["RA"] = ra * u.deg
    t["DEC"] = dec * u.deg
    t["RA_TRUE"] = ra_true * u.deg
    t["DEC_TRUE"] = dec_true * u.deg
    t["KIND"] = kind
    t["MAG_F814W"] = m814 * u.mag
    t["COLOR_F555W_F814W"] = vi * u.mag
    t["SNR_F814W"] = snr
    t["CROWD_F814W"] = crowd * u.mag
    t["SHARP_F814W"] = sharp
    t["ROUND_F814W"] = rnd
    t["FLAG_F814W"] = flag.astype(np.int16)
    t["OBJTYPE"] = np.where(kind == "cluster", 2, 1).astype(np.int16)
    t["FLUX_F200W"] = flux
    t["POS_ERR_MAS"] = err
    t["IN_SKY"] = in_sky
    t[
        "KIND"
    ].description = (
        "truth: rsg (red supergiant/AGB), star (foreground), cluster (dusty, extended), faint (catalogue-only)"
    )
    t["MAG_F814W"].description = "Vega-like F814W magnitude made up from the sky model's F200W flux"
    t["CROWD_F814W"].description = "DOLPHOT crowding: how much brighter without neighbours removed"
    t["FLUX_F200W"].description = "F200W flux of the sky model, MJy/sr * arcsec^2"
    t["POS_ERR_MAS"].description = "truth: per-axis RMS of the catalogue position error, mas"
    t["IN_SKY"].description = "truth: source is part of the sky model (False: catalogue-only)"
    t.meta["target"] = name
    t.meta["simulated"] = True
    t.meta["trgb_f814w"] = trgb
    t.meta["comment"] = ["Synthetic HST/DOLPHOT-like astrometric reference catalogue (paper section 3.8)."]
    passing = (
        (snr >= 10)
        & (crowd <= 0.01)
        & (flag == 0)
        & (t["OBJTYPE"] == 1)
        & (sharp > -0.025)
        & (sharp <= 0.01)
        & (rnd > -0.15)
        & (rnd <= 0.4)
        & (vi >= 2)
        & (vi < 4)
    )
    rel = f"external/{name}_refcat.ecsv"
    with atomic_path(Path(outdir) / rel) as tmp:
        t.write(tmp, format="ascii.ecsv", overwrite=True)
    log.info("%s refcat: %d sources (%d in the sky), %d pass the paper's cuts", name, x.size, n_sky, int(passing.sum()))
    return {
        "file": rel,
        "n_sources": int(x.size),
        "n_in_sky": int(n_sky),
        "n_pass_cuts": int(passing.sum()),
        "trgb_f814w": trgb,
        "position_error_mas": dict(REFCAT_ERROR_MAS),
    }


# -- 3. PSF models ---------------------------------------------------------------------------
def jwst_like_pupil():
    """poppy optic of the JWST-like pupil: 18 hexagonal segments around a missing centre
    (flat-to-flat 1.32 m, gaps 7 mm) behind a 0.74 m secondary on three 0.1 m struts."""
    import poppy

    hexes = poppy.MultiHexagonAperture(rings=2, flattoflat=PUPIL_FLAT_TO_FLAT, gap=PUPIL_GAP, center=False)
    secondary = poppy.SecondaryObscuration(secondary_radius=SECONDARY_RADIUS, n_supports=3, support_width=STRUT_WIDTH)
    return poppy.CompoundAnalyticOptic([hexes, secondary], name="JWST-like pupil")


def psf_model(band: str, oversample: int = 4, fov_pixels: int = 81) -> tuple[np.ndarray, float]:
    """Oversampled PSF of ``band`` through :func:`jwst_like_pupil` (no aberrations).

    Polychromatic over PSF_WAVELENGTH_FRACTIONS of the band's central wavelength (equal
    weights), detector pixel scale of the band's mosaic (processing.instruments).

    Returns
    -------
    psf : numpy.ndarray
        float64, shape (fov_pixels * oversample,) * 2, sum 1; centred on the array centre
        (the centre of the central detector pixel).
    pixscale : float
        arcsec per oversampled pixel.
    """
    import poppy

    from processing.instruments import PIXEL_SCALE_ARCSEC, channel_of

    scale = PIXEL_SCALE_ARCSEC[channel_of(band)]
    lam = FILTERS[band]["wavelength"] * 1e-6
    osys = poppy.OpticalSystem(
        name=f"JWST-like {band}", oversample=2, npix=PUPIL_NPIX, pupil_diameter=PUPIL_DIAMETER, verbose=False
    )
    osys.add_pupil(jwst_like_pupil())
    osys.add_detector(pixelscale=scale, fov_pixels=fov_pixels, oversample=oversample)
    fractions = np.asarray(PSF_WAVELENGTH_FRACTIONS, float)
    hdul = osys.calc_psf(wavelength=list(lam * fractions), weight=list(np.ones(fractions.size) / fractions.size))
    psf = np.asarray(hdul[0].data, float)
    return psf / psf.sum(), scale / oversample


def gaussian_psf(band: str, oversample: int = 4, fov_pixels: int = 81) -> tuple[np.ndarray, float]:
    """The PSF the synthetic sky is rendered with (processing/simulate/sky.py: compact
    components are Gaussians of the band's Table 2 FWHM), on the grid of :func:`psf_model`:
    pixel values are the Gaussian integrated over each oversampled pixel, sum 1, centred on the
    array centre."""
    from processing.instruments import PIXEL_SCALE_ARCSEC, channel_of

    pixscale = PIXEL_SCALE_ARCSEC[channel_of(band)] / oversample
    return gaussian(fov_pixels * oversample, pixscale, FILTERS[band]["fwhm"]), pixscale


def write_psf_models(outdir: Path, bands: list[str], oversample: int = 4, fov_pixels: int = 81) -> dict:
    """Write two PSFs per band, oversampled ``oversample`` times on ``fov_pixels`` detector
    pixels (the layout stpsf writes):

    - ``psf/psf_<band>.fits``: the synthetic sky's own PSF (:func:`gaussian_psf`, MODEL =
      'gaussian'), the one to build PSF-matching kernels from for this program's mosaics;
    - ``psf/jwst-like/psf_<band>.fits``: a diffraction PSF through a JWST-like pupil
      (:func:`psf_model`, MODEL = 'poppy'), for measuring kernels of a realistic PSF against
      the paper's Table 2 (the sky is not rendered with it).

    Header: FILTER, MODEL, WAVELEN (central wavelength, metres, as poppy/WebbPSF), PIXELSCL
    (arcsec per oversampled pixel), DETSCALE (arcsec per detector pixel), OVERSAMP, FWHM
    (measured, arcsec), FWHMTAB (Table 2, arcsec), SIMULATD; the poppy ones also NWAVES,
    BANDFRAC, PUPIL.

    Returns
    -------
    dict
        ``{band: {"file", "fwhm_arcsec", "table2_fwhm_arcsec", "pixscale_arcsec", "oversample",
        "jwst_like": {"file", "fwhm_arcsec"}}}``.
    """
    from astropy.io import fits

    from processing.fileio import atomic_path

    out = {}
    for band in bands:
        table2 = float(FILTERS[band]["fwhm"])
        rec = {}
        for model, rel in (("gaussian", f"psf/psf_{band}.fits"), ("poppy", f"psf/jwst-like/psf_{band}.fits")):
            psf, pixscale = (gaussian_psf if model == "gaussian" else psf_model)(band, oversample, fov_pixels)
            fwhm = measure_fwhm(psf, pixscale)
            if model == "poppy" and abs(fwhm / table2 - 1.0) > PSF_FWHM_TOLERANCE:
                log.warning(
                    '%s: PSF FWHM %.3f" is %.0f%% off Table 2\'s %.3f"', band, fwhm, 100 * (fwhm / table2 - 1), table2
                )
            hdr = fits.Header()
            hdr["FILTER"] = band
            hdr["MODEL"] = (model, "gaussian: the synthetic sky's PSF; poppy: JWST-like pupil")
            hdr["WAVELEN"] = (FILTERS[band]["wavelength"] * 1e-6, "[m] central wavelength")
            if model == "poppy":
                hdr["NWAVES"] = (len(PSF_WAVELENGTH_FRACTIONS), "wavelengths, equal weights")
                hdr["BANDFRAC"] = (
                    float(max(PSF_WAVELENGTH_FRACTIONS) - min(PSF_WAVELENGTH_FRACTIONS)),
                    "sampled bandwidth / WAVELEN",
                )
            hdr["PIXELSCL"] = (pixscale, "[arcsec] per oversampled pixel")
            hdr["DETSCALE"] = (pixscale * oversample, "[arcsec] per detector pixel")
            hdr["OVERSAMP"] = (oversample, "oversampling of the detector pixels")
            hdr["FWHM"] = (round(fwhm, 6), "[arcsec] measured from this image")
            hdr["FWHMTAB"] = (table2, "[arcsec] Table 2 (detectors.FILTERS)")
            if model == "poppy":
                hdr["PUPIL"] = ("JWST-like", "18 hex segments, 3-strut secondary (poppy)")
            hdr["SIMULATD"] = (True, "simulated data")
            with atomic_path(Path(outdir) / rel) as tmp:
                fits.PrimaryHDU(psf, header=hdr).writeto(tmp, overwrite=True)
            if model == "gaussian":
                rec = {
                    "file": rel,
                    "fwhm_arcsec": fwhm,
                    "table2_fwhm_arcsec": table2,
                    "pixscale_arcsec": pixscale,
                    "oversample": oversample,
                }
            else:
                rec["jwst_like"] = {"file": rel, "fwhm_arcsec": fwhm}
            log.info('%s %s PSF: FWHM %.4f" (Table 2 %.3f")', band, model, fwhm, table2)
        out[band] = rec
    return out


# -- 4. all of it ----------------------------------------------------------------------------
def write_external_inputs(outdir: Path, galaxies: dict[str, Galaxy], bands: list[str], seed: int) -> dict:
    """Write survey images and reference catalogue of every target and the PSF of every band.

    Generators: ``default_rng([seed, hash_str("external-images"), hash_str(target)])`` for the
    images and ``[seed, hash_str("refcat"), hash_str(target)]`` for the catalogue, so each
    target's draws do not depend on the other targets.

    Returns
    -------
    dict
        ``{"external": {target: {survey: {...}, ..., "refcat": {...}}}, "psf": {band: {...}}}``.
    """
    from processing.simulate.seeds import hash_str

    outdir = Path(outdir)
    external = {}
    for name in sorted(galaxies):
        g = galaxies[name]
        rec = write_external_images(
            outdir, name, g, np.random.default_rng([seed, hash_str("external-images"), hash_str(name)])
        )
        rec["refcat"] = write_reference_catalog(
            outdir, name, g, np.random.default_rng([seed, hash_str("refcat"), hash_str(name)])
        )
        external[name] = rec
    return {"external": external, "psf": write_psf_models(outdir, list(bands))}
