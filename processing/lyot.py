"""MIRI coronagraph (Lyot) separation (paper §3.4).

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

import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from processing.common.coronagraph import (
    CORON_SUFFIX,
    DO_NOT_USE,
    PART_KEYWORD,
    has_two_parts,
    region_of,
    split,
)
from processing.stages import Input, ModelParameters, Stage

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------------
# The adapter: a cal file in, its two parts out
# --------------------------------------------------------------------------------------------


def run(inputs: dict, outdir: Path, params: dict, context: dict) -> list[Path]:
    """Split one MIRI cal file: ``<exposure>_cal.fits`` (the imager part) and
    ``<exposure>_coron_cal.fits`` (the coronagraph part); an exposure with one part only is
    passed through as ``<exposure>_cal.fits``."""
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    from processing.fileio import link_or_copy, save_model_atomic

    p = LyotParameters(**params)
    src = Path(inputs["cal"][0])
    out_imager = Path(outdir) / src.name
    out_coron = Path(outdir) / src.name.replace("_cal.fits", CORON_SUFFIX)
    t0 = time.time()
    with datamodels.open(src) as m:
        region = region_of(m, p.aperture)
        science = (np.asarray(m.dq) & DO_NOT_USE) == 0
        if not p.separate or not has_two_parts(region, science):
            link_or_copy(src, out_imager)  # unchanged: the cache keeps one file
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
