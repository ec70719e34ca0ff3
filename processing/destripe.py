"""NIRCam 1/f destriping, single tile (paper §3.6.1).

NIRCam reads each amplifier's pixels along the fast axis; the 1/f noise of the readout puts
one offset on every pixel read in the same stretch of time: stripes along the fast axis, a
different pattern per amplifier. This stage measures them on one exposure's count-rate
image, flat-fielded (the sky is smoother there), and subtracts the model from the rate file
before the flat is applied (the stripes are added in the electronics, after the flat).

The measurement (:func:`stripe_model`):

1. A Butterworth high-pass filter removes large-scale structure, emission and large-scale
   stripes alike (smooth response: no ringing around sources); masked and bright pixels are
   first replaced by the low-pass level plus noise, and the image is mirror-padded.
2. A source mask of what survives: pixels beyond ``mask_sigma`` of the row-corrected
   filtered image, in connected groups of at least ``mask_min_pixels``, dilated.
3. At each median-filter scale, the stripes shorter than the scale are isolated by
   subtracting a median filter across the stripes, then taken as masked row medians per
   amplifier (the full-row median where more than ``max_masked_fraction`` of an amplifier
   row is masked; no correction where the full row is too), then as column medians.

What the filter removed (stripes longer than ~1/cutoff rows) is left for the multi-tile
stage (processing/destripe_multi.py), which compares overlapping exposures.

The readout geometry comes from the file: the fast axis from SUBSTRT/FASTAXIS (NIRCam in
science orientation reads along x), the amplifiers from NOUTPUTS or, without it, from the
width (a full-width array has the four 512-pixel amplifiers of the full frame, a subarray
one).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from processing.common.readout import DO_NOT_USE as _DO_NOT_USE
from processing.common.readout import REFERENCE_PIXEL as _REFERENCE_PIXEL
from processing.common.readout import readout_geometry
from processing.stages import Input, ModelParameters, Stage

log = logging.getLogger(__name__)


class SingleTileParameters(BaseModel):
    """Single-tile destriping (paper §3.6.1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cutoff_frequency_ratio: float = Field(
        0.005,
        gt=0,
        lt=0.5,
        description="Butterworth high-pass cut-off, cycles per pixel (0.005: structure larger than ~200 px is kept "
        "out of the stripe model)",
    )
    order: float = Field(2.0, gt=0, description="Butterworth filter order")
    bright_sigma: float = Field(
        5.0, gt=0, description="pixels this many sigma above the low-pass level are replaced by noise before filtering"
    )
    mask_sigma: float = Field(3.0, gt=0, description="source mask threshold on the filtered image, sigma")
    mask_min_pixels: int = Field(5, ge=1, description="smallest connected group of pixels kept in the source mask")
    mask_dilate_pixels: int = Field(11, ge=1, description="diameter of the dilation of the source mask, pixels")
    structure_box: int = Field(
        31,
        ge=3,
        description="box (pixels) over which the filtered image's power is compared with the noise to find extended "
        "emission",
    )
    structure_excess: float = Field(
        0.15,
        ge=0,
        description="emission is masked where the filtered image's mean square exceeds the noise's by this fraction "
        "(0.15 = 15%, ~3 sigma for a 31-pixel box)",
    )
    scales: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        [3, 7, 15, 31, 63, 127], min_length=1, description="median-filter lengths across the stripes, pixels"
    )
    max_masked_fraction: float = Field(
        0.8, gt=0, le=1, description="above this masked fraction of an amplifier row, the full-row median is used"
    )
    columns: bool = Field(True, description="also remove column medians after the rows")


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The algorithm (arrays only)
# --------------------------------------------------------------------------------------------


def robust_sigma(values: np.ndarray) -> float:
    """Standard deviation from the median absolute deviation (normal noise), of finite values."""
    from scipy.stats import median_abs_deviation

    v = values[np.isfinite(values)]
    return float(median_abs_deviation(v, scale="normal")) if v.size else 0.0


def butterworth_highpass(image: np.ndarray, cutoff: float, order: float) -> np.ndarray:
    """High-pass ``image`` (no NaN) with a Butterworth filter after mirror padding to twice
    its size (no wrap-around at the edges). Same shape and units as ``image``."""
    from skimage.filters import butterworth

    ny, nx = image.shape
    py, px = ny // 2, nx // 2
    padded = np.pad(image, ((py, py), (px, px)), mode="reflect")
    hp = butterworth(padded, cutoff_frequency_ratio=cutoff, high_pass=True, order=order, squared_butterworth=True)
    return hp[py : py + ny, px : px + nx]


def masked_row_medians(
    image: np.ndarray, mask: np.ndarray, amps: list[slice], max_masked: float
) -> tuple[np.ndarray, dict]:
    """Row medians per amplifier of the unmasked pixels.

    Parameters
    ----------
    image : ndarray (ny, nx)
        Stripes along x (rows).
    mask : ndarray of bool (ny, nx)
        True where a pixel is not used.
    amps : list of slice
        Amplifier column ranges.
    max_masked : float
        Above this masked fraction of an amplifier row, the row's median over all
        amplifiers is used; above it for the full row too, the row is not corrected (0).

    Returns
    -------
    offsets : ndarray (ny, nx)
        The row model, same units as ``image``.
    counts : dict
        ``fallback_rows`` (full-row medians used) and ``skipped_rows`` (left at 0).
    """
    import warnings

    data = np.where(mask, np.nan, image)
    out = np.zeros_like(image, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: handled below
        full_frac = np.mean(mask, axis=1)
        full = np.where(full_frac > max_masked, 0.0, np.nanmedian(data, axis=1))
        fallback = 0
        for s in amps:
            frac = np.mean(mask[:, s], axis=1)
            use_full = frac > max_masked
            fallback += int(np.sum(use_full & (full_frac <= max_masked)))
            out[:, s] = np.where(use_full, full, np.nanmedian(data[:, s], axis=1))[:, None]
    return np.nan_to_num(out), {"fallback_rows": fallback, "skipped_rows": int(np.sum(full_frac > max_masked))}


def source_mask(res: np.ndarray, bad: np.ndarray, sigma: float, min_pixels: int, dilate: int) -> np.ndarray:
    """Sources that survive the high-pass filter (True = masked), bad pixels included.

    ``res`` is the filtered image after a first, unmasked row-median correction (strong
    stripes themselves stay out of the mask); only connected groups of ``min_pixels`` or more
    are kept (single noise peaks are not sources), then dilated with a disk of diameter
    ``dilate`` pixels."""
    from scipy import ndimage

    s = robust_sigma(res[~bad])
    if s == 0:
        return bad.copy()
    med = float(np.median(res[~bad]))
    hot = (np.abs(res - med) > sigma * s) & ~bad
    labels, n = ndimage.label(hot)
    if n:
        sizes = ndimage.sum_labels(hot, labels, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= min_pixels
        hot = keep[labels]
    r = dilate / 2.0
    yy, xx = np.mgrid[-int(r) : int(r) + 1, -int(r) : int(r) + 1]
    disk = (yy**2 + xx**2) <= r * r
    return ndimage.binary_dilation(hot, structure=disk) | bad


def structure_mask(hp: np.ndarray, noise: np.ndarray, usable: np.ndarray, box: int, excess: float) -> np.ndarray:
    """Extended emission that survives the high-pass filter (True = masked).

    Where emission fills a frame, its structure along the columns leaks into any row median
    (measured: two to thirty times the injected stripes on the demo's galaxy-filled frames).
    Once a first row correction has taken the stripes out, what is left of the filtered
    image's power beyond the noise is emission: a box whose mean square exceeds the expected noise variance
    by more than ``excess`` is emission.

    Parameters
    ----------
    hp : ndarray (ny, nx)
        High-pass filtered image, after a first row correction.
    noise : ndarray (ny, nx)
        Expected per-pixel noise (same units; the ERR array of the rate file).
    usable : ndarray of bool
        Pixels that enter the box statistics.
    box, excess : int, float
        See :class:`SingleTileParameters`.
    """
    from scipy import ndimage

    w = usable.astype(float)
    num = ndimage.uniform_filter(np.where(usable, hp, 0.0) ** 2, box)
    den = ndimage.uniform_filter(np.where(usable, noise, 0.0) ** 2, box)
    n = ndimage.uniform_filter(w, box)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(n > 0.5, num / den, 0.0)
    return ratio > 1.0 + excess


def stripe_model(
    image: np.ndarray,
    valid: np.ndarray,
    amps: list[slice],
    params: SingleTileParameters | dict,
    seed: int = 0,
    noise: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """The 1/f stripe model of one flat-fielded exposure.

    Parameters
    ----------
    image : ndarray (ny, nx), float
        Flat-fielded count rate (DN/s), stripes along x (rows); NaN allowed where invalid.
    valid : ndarray of bool (ny, nx)
        Pixels that can be used (no DO_NOT_USE, no reference pixel, finite).
    amps : list of slice
        Amplifier column ranges (:func:`amplifier_slices`).
    params : SingleTileParameters or dict
        See :class:`SingleTileParameters`.
    seed : int
        Seed of the noise that replaces masked and bright pixels before filtering.
    noise : ndarray (ny, nx) or None
        Per-pixel noise (DN/s, flat-fielded: the ERR array divided by the flat); None: the
        robust standard deviation of the filtered image everywhere.

    Returns
    -------
    model : ndarray (ny, nx), float32
        Stripes (DN/s) to subtract, median zero (the level is the background's, not the
        stripes'). Zero where ``valid`` is False.
    info : dict
        ``rms`` (DN/s, RMS of the model over valid pixels), ``masked_fraction``,
        ``fallback_rows``, ``skipped_rows``, ``sigma`` (DN/s, noise of the filtered image).
    """
    from scipy import ndimage

    p = params if isinstance(params, SingleTileParameters) else SingleTileParameters(**params)
    rng = np.random.default_rng(seed)
    img = np.asarray(image, dtype=np.float64)
    valid = valid & np.isfinite(img)
    if valid.sum() < 0.05 * img.size:
        return np.zeros(img.shape, np.float32), {
            "rms": 0.0,
            "masked_fraction": 1.0,
            "emission_fraction": 0.0,
            "fallback_rows": 0,
            "skipped_rows": img.shape[0],
            "sigma": 0.0,
        }
    level = float(np.median(img[valid]))
    # 1. bad pixels -> noise about the level; bright pixels -> low-pass level + noise; high-pass
    fill = np.where(valid, img, level)
    hp0 = butterworth_highpass(fill, p.cutoff_frequency_ratio, p.order)
    sig0 = robust_sigma(hp0[valid])
    low = fill - hp0
    bright = valid & (hp0 > p.bright_sigma * sig0)
    bright = ndimage.binary_dilation(bright, iterations=2) & valid
    replace = ~valid | bright
    fill = np.where(replace, low + rng.normal(0.0, sig0, img.shape), img)
    hp = butterworth_highpass(fill, p.cutoff_frequency_ratio, p.order)
    # 2. source mask
    # both masks are measured after a first, unmasked row correction: strong stripes are
    # neither sources nor emission
    rows0, _ = masked_row_medians(hp, ~valid | bright, amps, 1.0)
    mask = source_mask(hp - rows0, ~valid | bright, p.mask_sigma, p.mask_min_pixels, p.mask_dilate_pixels)
    sigma_map = np.where(np.isfinite(noise) & valid, noise, sig0) if noise is not None else np.full(img.shape, sig0)
    emission = structure_mask(hp - rows0, sigma_map, valid & ~mask, p.structure_box, p.structure_excess)
    mask |= emission
    # 3. stripes at increasing scales: rows per amplifier, then columns
    current = hp.copy()
    model = np.zeros_like(hp)
    counts = {"fallback_rows": 0, "skipped_rows": 0}
    for scale in p.scales:
        smooth = ndimage.median_filter(current, size=(scale, 1), mode="reflect")
        rows, c = masked_row_medians(current - smooth, mask, amps, p.max_masked_fraction)
        current -= rows
        model += rows
        counts = {k: max(counts[k], c[k]) for k in counts}
        if p.columns:
            smooth = ndimage.median_filter(current, size=(1, scale), mode="reflect")
            cols, _ = masked_row_medians((current - smooth).T, mask.T, [slice(0, img.shape[0])], p.max_masked_fraction)
            current -= cols.T
            model += cols.T
    model -= np.median(model[valid])
    model[~valid] = 0.0
    info = {
        "rms": float(np.std(model[valid])),
        "masked_fraction": float(mask[valid].mean()),
        "emission_fraction": float(emission[valid].mean()),
        "sigma": sig0,
        **counts,
    }
    return model.astype(np.float32), info


# --------------------------------------------------------------------------------------------
# The adapter: rate file in, destriped rate file and the stripe model out
# --------------------------------------------------------------------------------------------


def flat_of(model) -> np.ndarray:
    """The flat field image2 will divide ``model`` (a rate ImageModel) by, from the same
    CRDS reference and the same step: jwst's flat_field applied to an image of ones.
    NaN where the flat is not valid."""
    from jwst.flatfield import FlatFieldStep

    ones = model.copy()
    ones.data[...] = 1.0
    ones.err[...] = 0.0
    for name in ("var_poisson", "var_rnoise", "var_flat"):
        if ones.hasattr(name) and getattr(ones, name) is not None and getattr(ones, name).size:
            getattr(ones, name)[...] = 0.0
    step = FlatFieldStep()  # run(), not call(): call() would set up stpipe's console logging in the worker
    with step.run(ones) as out:
        with np.errstate(divide="ignore", invalid="ignore"):
            flat = 1.0 / np.asarray(out.data, dtype=np.float64)
    ones.close()
    flat[~np.isfinite(flat) | (flat <= 0)] = np.nan
    return flat


def run(inputs: dict, outdir: Path, params: dict, context: dict) -> list[Path]:
    """Destripe one NIRCam rate file; writes ``<exposure>_rate.fits`` and the stripe model
    ``<exposure>_destripe1.fits`` (DN/s, the model subtracted, on the rate file's pixels)."""
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    from processing.fileio import save_model_atomic

    p = SingleTileParameters(**params)
    src = Path(inputs["rate"][0])
    out = Path(outdir) / src.name
    t0 = time.time()
    with datamodels.open(src) as m:
        flat = flat_of(m)
        data = np.asarray(m.data, dtype=np.float64)
        valid = np.isfinite(data) & np.isfinite(flat) & ((m.dq & (_DO_NOT_USE | _REFERENCE_PIXEL)) == 0)
        along_x, amps = readout_geometry(m)
        ff = data / np.where(np.isfinite(flat), flat, 1.0)
        view = (lambda a: a) if along_x else (lambda a: a.T)
        err = np.asarray(m.err, dtype=np.float64) / np.where(np.isfinite(flat), flat, 1.0)
        model_ff, info = stripe_model(view(ff), view(valid), amps, p, seed=_seed(src.name), noise=view(err))
        model_ff = view(model_ff)
        # measured flat-fielded, subtracted before the flat: image2 divides the flat back out
        model = (model_ff * np.where(np.isfinite(flat), flat, 1.0)).astype(np.float32)
        m.data = (data - model).astype(np.float32)
        m.meta.filename = out.name
        save_model_atomic(m, out)
    elapsed = time.time() - t0
    removed = float(np.std(model[valid])) if valid.any() else 0.0
    with fits.open(out, mode="update") as hdul:
        h = hdul[0].header
        h["HLSPDS1"] = (round(removed, 6), "1/f stripes removed, single tile: RMS DN/s")
        h["HLSPDS1M"] = (round(info["masked_fraction"], 4), "single-tile destripe: masked fraction")
    diag = Path(outdir) / src.name.replace("_rate.fits", "_destripe1.fits")
    hdu = fits.ImageHDU(model, name="STRIPES")
    hdu.header["BUNIT"] = ("DN/s", "stripe model subtracted from the rate file")
    prim = fits.PrimaryHDU()
    prim.header["HLSPDS1"] = (round(removed, 6), "RMS of the model, DN/s")
    prim.header["FASTX"] = (along_x, "fast-read axis along x (stripes along rows)")
    prim.header["NAMPS"] = (len(amps), "amplifiers measured separately")
    for k in ("masked_fraction", "emission_fraction", "fallback_rows", "skipped_rows", "sigma"):
        prim.header["HIERARCH " + k.upper()] = info[k]
    fits.HDUList([prim, hdu]).writeto(diag)
    log.info(
        "%s: single-tile stripes RMS %.4f DN/s (masked %.0f%%, %d fallback rows, %d amplifier(s)) in %.1f s",
        src.name,
        removed,
        100 * info["masked_fraction"],
        info["fallback_rows"],
        len(amps),
        elapsed,
    )
    return [out, diag]


def _seed(name: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


STAGE = Stage(
    name="destripe",
    unit="exposure",
    inputs=(Input("rate", "same", "lv1", "_rate.fits"),),
    outputs=("_rate.fits", "_destripe1.fits"),
    run="processing.destripe:run",
    parameters=ModelParameters(SingleTileParameters),
    instruments=("nircam",),
    refines=("lv1", "_rate.fits"),
    memory_gb=2.0,
    description="NIRCam 1/f destriping of each rate file: Butterworth high-pass, source mask, multi-scale row/column "
    "medians per amplifier",
)
