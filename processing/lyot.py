"""MIRI coronagraph (Lyot) separation (paper §3.4; reference/pipeline.md step 5).

The Lyot coronagraph shares the MIRI imager's detector and optical path, so its corner of
every full-frame exposure holds science data, but with its own background level. To level-
match it on its own, each calibrated exposure is split in two: an imager-only part (the
coronagraph region marked non-science in DQ) and a coronagraph-only part (the rest marked),
both with the exposure's full pixel grid and WCS. Level matching (processing/level_match.py)
solves one offset per part and merges the two back into one calibrated exposure, so both
parts reach the mosaic.

The region is the detector footprint of a SIAF aperture (default ``MIRIM_MASKLYOT``, the
readout region of the Lyot coronagraph: full-frame science pixels x 1-320, y 719-1022), from
pysiaf's bundled SIAF, cut to the exposure's subarray. A subarray without any of the region,
or entirely inside it, has one part only and passes through unchanged. The synthetic program
injects its coronagraph background in the same region (processing/simulate/detectors.py).

DQ bits set on the other part: DO_NOT_USE and NON_SCIENCE (jwst's resample and outlier
detection skip both). The split is exactly invertible (:func:`merge`): each pixel comes back
from the part in which it is science, its DQ unchanged.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from processing.stages import Input, ModelParameters, Stage

log = logging.getLogger(__name__)

DO_NOT_USE = 1
NON_SCIENCE = 512
#: the bits that mark the other part of a split exposure
SPLIT_FLAGS = DO_NOT_USE | NON_SCIENCE

#: file-name suffix of the coronagraph part (it ends in ``_cal.fits``: a reader of a cal file
#: that is not level-matched gets both parts)
CORON_SUFFIX = "_coron_cal.fits"
#: primary-header keyword naming the part a file holds
PART_KEYWORD = "HLSPLYOT"
#: the arrays split and merged (those present in a cal file)
ARRAYS = ("data", "dq", "err", "var_poisson", "var_rnoise", "var_flat")

APERTURES = ("MIRIM_MASKLYOT", "MIRIM_CORONLYOT")


class LyotParameters(BaseModel):
    """MIRI coronagraph separation (paper §3.4)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    separate: bool = Field(
        True,
        description="split each full-frame exposure into imager and coronagraph parts (false: pass every cal file "
        "through unchanged; level matching then treats the exposure as one image, as jwst's skymatch "
        "does)",
    )
    aperture: Literal["MIRIM_MASKLYOT", "MIRIM_CORONLYOT"] = Field(
        "MIRIM_MASKLYOT",
        description="SIAF aperture whose detector footprint is the coronagraph part: MIRIM_MASKLYOT "
        "(the Lyot readout region, full-frame x 1-320, y 719-1022) or MIRIM_CORONLYOT (its 272x272 science field)",
    )


# --------------------------------------------------------------------------------------------
# The algorithm (arrays only)
# --------------------------------------------------------------------------------------------


@functools.cache
def aperture_polygon(aperture: str = "MIRIM_MASKLYOT") -> np.ndarray:
    """Corners of a MIRI SIAF aperture in full-frame science pixels (0-based pixel centres;
    corners at half-pixel edges), from pysiaf's bundled SIAF (no network).

    Returns
    -------
    ndarray (4, 2)
        (x, y) of the corners, 0-based, DMS orientation.
    """
    import pysiaf  # logs a warning on import that the PRD version cannot be checked online

    if aperture not in APERTURES:
        raise ValueError(f"unknown Lyot aperture {aperture!r}; one of {APERTURES}")
    siaf = pysiaf.Siaf("MIRI")
    ap, full = siaf[aperture], siaf["MIRIM_FULL"]
    xd, yd = ap.corners("det")
    xs, ys = full.det_to_sci(np.asarray(xd), np.asarray(yd))
    return np.column_stack([np.asarray(xs) - 1.0, np.asarray(ys) - 1.0])


def lyot_region(
    shape: tuple[int, int], xstart: int = 1, ystart: int = 1, aperture: str = "MIRIM_MASKLYOT"
) -> np.ndarray:
    """Pixels of an image that lie in the coronagraph region.

    Parameters
    ----------
    shape : (ny, nx)
        Shape of the image (a full frame or a subarray), pixels.
    xstart, ystart : int
        1-based full-frame position of the image's first pixel (``meta.subarray``).
    aperture : str
        SIAF aperture of the region (:data:`APERTURES`).

    Returns
    -------
    ndarray of bool (ny, nx)
        True where the pixel centre lies inside the aperture's footprint.
    """
    from matplotlib.path import Path as Polygon

    poly = aperture_polygon(aperture)
    ny, nx = shape
    x0, y0 = xstart - 1, ystart - 1
    # the region's bounding box inside the image: only those pixels are tested
    lo = np.floor(poly.min(axis=0)).astype(int) - np.array([x0, y0])
    hi = np.ceil(poly.max(axis=0)).astype(int) - np.array([x0, y0]) + 1
    cx0, cy0 = max(lo[0], 0), max(lo[1], 0)
    cx1, cy1 = min(hi[0], nx), min(hi[1], ny)
    out = np.zeros(shape, dtype=bool)
    if cx1 <= cx0 or cy1 <= cy0:
        return out
    yy, xx = np.mgrid[cy0:cy1, cx0:cx1]
    inside = Polygon(poly).contains_points(np.column_stack([(xx + x0).ravel(), (yy + y0).ravel()]))
    out[cy0:cy1, cx0:cx1] = inside.reshape(yy.shape)
    return out


def split(dq: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DQ arrays of the two parts of a split exposure.

    Parameters
    ----------
    dq : ndarray of uint32 (ny, nx)
        The exposure's DQ.
    region : ndarray of bool (ny, nx)
        The coronagraph region (:func:`lyot_region`).

    Returns
    -------
    (dq_imager, dq_coron) : ndarrays of uint32 (ny, nx)
        ``dq`` with :data:`SPLIT_FLAGS` added inside the region (imager part) or outside it
        (coronagraph part).
    """
    dq = np.asarray(dq, dtype=np.uint32)
    flags = np.uint32(SPLIT_FLAGS)
    return np.where(region, dq | flags, dq), np.where(region, dq, dq | flags)


def merge(imager: dict[str, np.ndarray], coron: dict[str, np.ndarray], region: np.ndarray) -> dict[str, np.ndarray]:
    """One exposure from its two parts: each pixel from the part in which it is science.

    Parameters
    ----------
    imager, coron : dict of name -> ndarray (ny, nx)
        The arrays of each part (:data:`ARRAYS`, any subset present in both).
    region : ndarray of bool (ny, nx)

    Returns
    -------
    dict of name -> ndarray (ny, nx)
        ``merge(split(x)) == x`` exactly, for every array.
    """
    return {k: np.where(region, coron[k], imager[k]) for k in imager if k in coron}


def has_two_parts(region: np.ndarray, science: np.ndarray) -> bool:
    """Whether an image has science pixels both inside and outside the region."""
    return bool(np.any(region & science)) and bool(np.any(~region & science))


# --------------------------------------------------------------------------------------------
# The adapter: a cal file in, its two parts out
# --------------------------------------------------------------------------------------------


def region_of(model, aperture: str = "MIRIM_MASKLYOT") -> np.ndarray:
    """The coronagraph region on a datamodel's pixels (its subarray position from the header)."""
    sub = model.meta.subarray
    return lyot_region(model.data.shape[-2:], int(sub.xstart or 1), int(sub.ystart or 1), aperture)


def run(inputs: dict, outdir: Path, params: dict, context: dict) -> list[Path]:
    """Split one MIRI cal file: ``<exposure>_cal.fits`` (the imager part) and
    ``<exposure>_coron_cal.fits`` (the coronagraph part); an exposure with one part only is
    passed through as ``<exposure>_cal.fits``."""
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    from processing.fileio import save_model_atomic

    p = LyotParameters(**params)
    src = Path(inputs["cal"][0])
    out_imager = Path(outdir) / src.name
    out_coron = Path(outdir) / src.name.replace("_cal.fits", CORON_SUFFIX)
    t0 = time.time()
    with datamodels.open(src) as m:
        region = region_of(m, p.aperture)
        science = (np.asarray(m.dq) & DO_NOT_USE) == 0
        if not p.separate or not has_two_parts(region, science):
            shutil.copyfile(src, out_imager)
            log.info(
                "%s: %s, passed through",
                src.name,
                "separation off (lyot.separate = false)"
                if not p.separate
                else f"no coronagraph region to separate ({p.aperture}; subarray {m.meta.subarray.name})",
            )
            return [out_imager]
        dq_imager, dq_coron = split(m.dq, region)
        m.dq = dq_imager
        m.meta.filename = out_imager.name
        save_model_atomic(m, out_imager)
        m.dq = dq_coron
        m.meta.filename = out_coron.name
        save_model_atomic(m, out_coron)
    for path, part in ((out_imager, "IMAGER"), (out_coron, "CORON")):
        with fits.open(path, mode="update") as hdul:
            hdul[0].header[PART_KEYWORD] = (part, "part of a Lyot-separated exposure")
            hdul[0].header["HLSPLYAP"] = (p.aperture, "SIAF aperture of the coronagraph part")
    log.info(
        "%s: split into imager (%d px) and coronagraph (%d px, %s) parts in %.1f s",
        src.name,
        int(np.sum(science & ~region)),
        int(np.sum(science & region)),
        p.aperture,
        time.time() - t0,
    )
    return [out_imager, out_coron]


def part_of(path: Path, header=None) -> str:
    """'imager', 'coron' or 'full' (an exposure that was not split) for a cal file."""
    from astropy.io import fits

    h = header if header is not None else fits.getheader(path, 0)
    return {"IMAGER": "imager", "CORON": "coron"}.get(str(h.get(PART_KEYWORD, "")).upper(), "full")


def exposure_of(path: Path) -> str:
    """The exposure name of a cal file or of either part of a split one."""
    name = Path(path).name
    for suffix in (CORON_SUFFIX, "_cal.fits"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


STAGE = Stage(
    name="lyot",
    unit="exposure",
    inputs=(Input("cal", "same", "lv2", "_cal.fits"),),
    outputs=("_cal.fits", CORON_SUFFIX),
    run="processing.lyot:run",
    parameters=ModelParameters(LyotParameters),
    instruments=("miri",),
    refines=("lv2", "_cal.fits"),
    memory_gb=1.0,
    description="MIRI coronagraph separation: each full-frame cal file split into imager-only and Lyot-only parts "
    "(DQ), level-matched separately and merged",
)
