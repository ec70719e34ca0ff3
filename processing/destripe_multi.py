"""NIRCam 1/f destriping, multi tile (paper §3.6.2).

The single-tile stage (processing/destripe.py) cannot see stripes longer than its high-pass
filter, nor tell stripes from emission that fills a frame. Overlapping exposures can: the sky
is the same in all of them, the 1/f noise is not. For each exposure of a target and band:

1. the sigma-clipped median of every exposure that overlaps it (itself included), each
   reprojected onto its pixels and aligned to it by phase correlation (until relative
   astrometry runs first, tiles of different visits are misaligned by the guide-star error,
   up to an arcsecond, and a misaligned difference holds emission); the exposure minus that
   median holds its own stripes and noise, not the sky (pixels that only this exposure covers
   are not used);
2. sigma-clipped row medians of that difference, per amplifier, along the fast-read axis:
   the first model, subtracted;
3. second pass: the median of the corrected exposures, median-filtered across the stripes
   over a tenth of the array (what residual stripes survived the stack is smoothed away),
   subtracted from the corrected exposure; row medians over the full row (the filter moves
   emission along the columns, so amplifiers are not separated): the second model.

Memory: one exposure's overlaps at a time (the stack of the exposures that overlap it on its
own pixels), never the whole band. The two models of each exposure are written as a
diagnostic (MJy/sr) and their RMS in the cal file's header.

Runs after image2 on the calibrated exposures; when level matching exists it belongs after
it (the paper's order): the per-exposure level offsets are then already removed. Until then
the median of each model is set to zero, so this stage never changes an exposure's level.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from processing.common.images import shifted as _shifted
from processing.common.readout import DO_NOT_USE as _DO_NOT_USE
from processing.common.readout import readout_geometry
from processing.stages import Input, ModelParameters, Stage

log = logging.getLogger(__name__)


class MultiTileParameters(BaseModel):
    """Multi-tile destriping (paper §3.6.2)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    sigma: float = Field(3.0, gt=0, description="clip of the median stack and of the row medians, sigma")
    iterations: int = Field(5, ge=1, description="sigma-clipping iterations")
    min_overlap: float = Field(
        0.05,
        ge=0,
        le=1,
        description="an exposure covering less than this fraction of another's pixels is not stacked with it",
    )
    second_pass: bool = Field(
        False,
        description="the paper's second pass over the stack median-filtered across the stripes, full-row medians "
        "(off by default: on the galaxy-filled demo frames it added 3-4x the noise floor of row "
        "structure, docs/performance.md; the PHANGS manifests turn it on)",
    )
    smooth_fraction: float = Field(
        0.1,
        gt=0,
        le=1,
        description="length of the median filter across the stripes in the second pass, fraction of the array size",
    )
    min_row_pixels: int = Field(
        20, ge=1, description="fewest usable pixels for a row (amplifier) median; fewer: not corrected"
    )
    align: bool = Field(
        True,
        description="align each overlapping exposure to the one being corrected (phase correlation on the overlap) "
        "before differencing: what relative astrometry, which runs first, left of the visits' guide-star errors",
    )
    max_shift_pixels: float = Field(
        64.0,
        gt=0,
        description="a registration shift larger than this (pixels) is not trusted: that exposure is left out of the "
        "stack",
    )


# --------------------------------------------------------------------------------------------
# The algorithm (arrays only)
# --------------------------------------------------------------------------------------------


def clipped_row_medians(
    diff: np.ndarray, amps: list[slice], sigma: float, iterations: int, min_pixels: int
) -> np.ndarray:
    """Sigma-clipped median of each row of ``diff`` per amplifier.

    Parameters
    ----------
    diff : ndarray (ny, nx)
        Difference image (stripes along rows); NaN where not usable.
    amps : list of slice
        Column ranges measured separately (one slice for the full row).
    sigma, iterations : float, int
        Clipping about the median, in robust standard deviations of each row.
    min_pixels : int
        Rows with fewer usable pixels get 0.

    Returns
    -------
    ndarray (ny, nx)
        The row model, units of ``diff``.
    """
    from astropy.stats import sigma_clipped_stats

    out = np.zeros(diff.shape, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in amps:
            part = diff[:, s]
            _, med, _ = sigma_clipped_stats(part, axis=1, sigma=sigma, maxiters=iterations, stdfunc="mad_std")
            n = np.sum(np.isfinite(part), axis=1)
            med = np.where((n >= min_pixels) & np.isfinite(med), med, 0.0)
            out[:, s] = med[:, None]
    return out


def clipped_median_stack(layers: list[np.ndarray], sigma: float, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel sigma-clipped median of equally shaped images (NaN = no data).

    Returns ``(median, count)``: count is the number of images with data at each pixel."""
    from astropy.stats import sigma_clipped_stats

    cube = np.stack(layers)
    count = np.sum(np.isfinite(cube), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, med, _ = sigma_clipped_stats(cube, axis=0, sigma=sigma, maxiters=iterations, stdfunc="mad_std")
    return np.asarray(med, dtype=np.float64), count


def difference_model(
    own: np.ndarray, others: list[np.ndarray], amps: list[slice], p: MultiTileParameters, smooth: bool
) -> np.ndarray:
    """One pass of the multi-tile model of one exposure.

    Parameters
    ----------
    own : ndarray (ny, nx)
        The exposure (MJy/sr, stripes along rows), NaN where not valid.
    others : list of ndarray (ny, nx)
        The overlapping exposures reprojected onto ``own``'s pixels, NaN outside them.
    amps : list of slice
        Amplifier column ranges (first pass); the second pass uses the full row.
    p : MultiTileParameters
    smooth : bool
        Second pass: median-filter the stack across the stripes (axis 0) over
        ``smooth_fraction`` of the array and take full-row medians.

    Returns
    -------
    ndarray (ny, nx)
        Stripe model (MJy/sr), median zero.
    """
    from scipy import ndimage

    stack, count = clipped_median_stack([own] + others, p.sigma, p.iterations)
    if smooth:
        size = max(3, int(round(p.smooth_fraction * own.shape[0])) | 1)
        filled = np.where(np.isfinite(stack), stack, np.nanmedian(stack))
        stack = np.where(np.isfinite(stack), ndimage.median_filter(filled, size=(size, 1), mode="reflect"), np.nan)
        amps = [slice(0, own.shape[1])]
    diff = np.where(count >= 2, own - stack, np.nan)  # a pixel only this exposure covers says nothing
    model = clipped_row_medians(diff, amps, p.sigma, p.iterations, p.min_row_pixels)
    finite = np.isfinite(own)
    if finite.any():
        model -= np.median(model[finite])
    return model


# --------------------------------------------------------------------------------------------
# The adapter: cal files in, destriped cal files and the stripe models out
# --------------------------------------------------------------------------------------------


def _load(path: Path):
    from stdatamodels.jwst import datamodels

    m = datamodels.open(path)
    data = np.array(m.data, dtype=np.float64)
    data[(m.dq & _DO_NOT_USE) != 0] = np.nan
    return m, data


def _footprint(wcs, shape) -> np.ndarray:
    ny, nx = shape
    x = np.array([0, nx - 1, nx - 1, 0, (nx - 1) / 2])
    y = np.array([0, 0, ny - 1, ny - 1, (ny - 1) / 2])
    ra, dec = wcs(x, y)
    return np.column_stack([ra, dec])


def _overlap(wcs_to, shape_to, corners_from) -> float:
    """Rough fraction of ``shape_to`` covered by another exposure (bounding box of its corners)."""
    x, y = wcs_to.invert(corners_from[:, 0], corners_from[:, 1])
    ny, nx = shape_to
    x0, x1 = max(np.nanmin(x), 0), min(np.nanmax(x), nx - 1)
    y0, y1 = max(np.nanmin(y), 0), min(np.nanmax(y), ny - 1)
    if not (np.isfinite([x0, x1, y0, y1]).all()) or x1 <= x0 or y1 <= y0:
        return 0.0
    return float((x1 - x0) * (y1 - y0) / ((nx - 1) * (ny - 1)))


def _reproject(data: np.ndarray, wcs_from, wcs_to, shape_to) -> np.ndarray:
    """``data`` (on ``wcs_from``'s pixels) on ``wcs_to``'s pixels, bilinear, NaN outside."""
    from reproject import reproject_interp

    out, footprint = reproject_interp((data, wcs_from), wcs_to, shape_out=shape_to, order="bilinear")
    return np.where(footprint > 0, out, np.nan)


def register(own: np.ndarray, other: np.ndarray, min_pixels: int = 4096) -> tuple[float, float] | None:
    """Shift (dy, dx) in pixels that aligns ``other`` with ``own`` (both on ``own``'s pixels,
    NaN where absent), by phase correlation on the largest box both cover; None where the
    overlap is too small to measure (fewer than ``min_pixels``).

    The stripes (along rows) are taken out of both first with row medians, so that the
    correlation follows the sky, not the stripes."""
    from skimage.registration import phase_cross_correlation

    both = np.isfinite(own) & np.isfinite(other)
    rows = np.where(both.mean(axis=1) > 0.5)[0]
    cols = np.where(both.mean(axis=0) > 0.5)[0]
    if rows.size * cols.size < min_pixels:
        return None
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a, b = own[box], other[box]
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.mean() < 0.8:
        return None
    fill = lambda x: np.where(ok, x - np.nanmedian(np.where(ok, x, np.nan), axis=1, keepdims=True), 0.0)  # noqa: E731
    from skimage.filters import window

    taper = window("hann", a.shape)  # no edge discontinuity to pull the peak towards zero shift
    shift, _, _ = phase_cross_correlation(fill(a) * taper, fill(b) * taper, upsample_factor=20, normalization=None)
    return float(shift[0]), float(shift[1])


def run(inputs: dict, outdir: Path, params: dict, context: dict) -> list[Path]:
    """Destripe every NIRCam cal file of a target and band against the others; writes each
    ``<exposure>_cal.fits`` and ``<exposure>_destripe2.fits`` (the two models, MJy/sr)."""
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    from processing.fileio import save_model_atomic

    p = MultiTileParameters(**params)
    paths = [Path(f) for f in inputs["cal"]]
    t0 = time.time()
    meta = []
    for path in paths:  # geometry only: the pixels are read when needed
        with datamodels.open(path) as m:
            fastx, amps = readout_geometry(m)
            shape = m.data.shape
            meta.append(
                {
                    "path": path,
                    "wcs": m.meta.wcs,
                    "shape": shape,
                    "fastx": fastx,
                    "amps": amps,
                    "corners": _footprint(m.meta.wcs, shape),
                }
            )
    neighbours = {
        i: [
            j
            for j in range(len(paths))
            if j != i and _overlap(meta[i]["wcs"], meta[i]["shape"], meta[j]["corners"]) >= p.min_overlap
        ]
        for i in range(len(paths))
    }
    models: dict[int, list[np.ndarray]] = {}
    shifts: dict[tuple[int, int], tuple[float, float] | None] = {}
    for stage_pass in (False, True) if p.second_pass else (False,):
        current = {}
        for i in range(len(paths)):
            own = _oriented(_load_data(paths[i]), meta[i]) - sum(models.get(i, [np.zeros(1)]))
            others = []
            for j in neighbours[i]:
                d = _load_data(paths[j]) - _unoriented(sum(models.get(j, [np.zeros(1)])), meta[j])
                d = _oriented(_reproject(d, meta[j]["wcs"], meta[i]["wcs"], meta[i]["shape"]), meta[i])
                if p.align:
                    if (i, j) not in shifts:
                        shifts[(i, j)] = register(own, d)
                    s = shifts[(i, j)]
                    if s is None or np.hypot(*s) > p.max_shift_pixels:
                        continue  # an overlap too small to align, or an implausible shift: not stacked
                    d = _shifted(d, *s)
                others.append(d)
            current[i] = difference_model(own, others, meta[i]["amps"], p, smooth=stage_pass)
        for i, mdl in current.items():
            models.setdefault(i, []).append(mdl)
    written = []
    summary = []
    for i, path in enumerate(paths):
        total = _unoriented(sum(models[i]), meta[i])
        out = Path(outdir) / path.name
        with datamodels.open(path) as m:
            valid = np.isfinite(m.data) & ((m.dq & _DO_NOT_USE) == 0)
            m.data = (np.asarray(m.data, dtype=np.float64) - total).astype(np.float32)
            m.meta.filename = out.name
            save_model_atomic(m, out)
        rms = [float(np.std(_unoriented(mdl, meta[i])[valid])) if valid.any() else 0.0 for mdl in models[i]]
        with fits.open(out, mode="update") as hdul:
            hdul[0].header["HLSPDS2"] = (round(rms[0], 6), "1/f stripes removed, multi tile: RMS MJy/sr")
            if len(rms) > 1:
                hdul[0].header["HLSPDS3"] = (round(rms[1], 6), "multi-tile second pass: RMS MJy/sr")
            hdul[0].header["HLSPDSN"] = (len(neighbours[i]), "overlapping exposures stacked")
        diag = Path(outdir) / path.name.replace("_cal.fits", "_destripe2.fits")
        hdus = [fits.PrimaryHDU()]
        for k, mdl in enumerate(models[i], start=1):
            h = fits.ImageHDU(_unoriented(mdl, meta[i]).astype(np.float32), name=f"PASS{k}")
            h.header["BUNIT"] = ("MJy/sr", "stripe model subtracted from the cal file")
            hdus.append(h)
        hdus[0].header["NOVERLAP"] = (len(neighbours[i]), "overlapping exposures stacked")
        fits.HDUList(hdus).writeto(diag)
        written += [out, diag]
        moved = [
            f"{paths[j].name[:25]} {shifts[(i, j)][0]:+.2f},{shifts[(i, j)][1]:+.2f} px"
            for j in neighbours[i]
            if shifts.get((i, j)) is not None
        ]
        summary.append(
            f"{path.name}: {', '.join(f'{r:.4f}' for r in rms)} MJy/sr ({len(neighbours[i])} overlapping"
            + (f"; aligned by (dy,dx) {'; '.join(moved)}" if moved else "")
            + ")"
        )
    log.info(
        "multi-tile destriping of %d exposure(s) in %.1f s; removed RMS per pass: %s",
        len(paths),
        time.time() - t0,
        "; ".join(summary),
    )
    return written


def _load_data(path: Path) -> np.ndarray:
    m, data = _load(path)
    m.close()
    return data


def _oriented(a: np.ndarray, meta: dict) -> np.ndarray:
    """Stripes along rows (transposed when the fast axis is y)."""
    return a if meta["fastx"] else a.T


_unoriented = _oriented  # a transpose is its own inverse


STAGE = Stage(
    name="destripe_multi",
    unit="target_band",
    inputs=(Input("cal", "members", "lv2", "_cal.fits"),),
    outputs=("_cal.fits", "_destripe2.fits"),
    run="processing.destripe_multi:run",
    parameters=ModelParameters(MultiTileParameters),
    instruments=("nircam",),
    refines=("lv2", "_cal.fits"),
    memory_gb=2.5,
    description="NIRCam 1/f destriping against the overlapping exposures (median stack, row medians per amplifier, "
    "then a smoothed second pass)",
)
