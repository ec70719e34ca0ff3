"""Parameters of the two astrometry stages (processing/astrometry/relative.py, absolute.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CatalogCuts(BaseModel):
    """The paper's selection of reference stars (section 3.8), applied to the columns of the
    reference catalogue that exist (a cut whose column is absent is reported, not applied).
    Widen a range to switch a cut off (TOML has no null)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    snr_min: float = Field(10.0, ge=0, description="reference: lowest S/N (column SNR_F814W)")
    crowd_max: float = Field(0.01, ge=0, description="reference: largest DOLPHOT crowding, mag (CROWD_F814W)")
    flag_max: int = Field(0, ge=0, description="reference: largest photometric quality flag (FLAG_F814W)")
    objtype: int = Field(1, ge=1, description="reference: DOLPHOT object type (OBJTYPE; 1 = good star)")
    sharp_min: float = Field(-0.025, description="reference: sharpness above this (SHARP_F814W)")
    sharp_max: float = Field(0.01, description="reference: sharpness at most this")
    round_min: float = Field(-0.15, description="reference: roundness above this (ROUND_F814W)")
    round_max: float = Field(0.4, description="reference: roundness at most this")
    color_min: float = Field(2.0, description="reference: F555W-F814W at least this, mag (COLOR_F555W_F814W)")
    color_max: float = Field(4.0, description="reference: F555W-F814W below this, mag")
    mag_min: float = Field(
        -99.0,
        description="reference: F814W at least this, mag (MAG_F814W; the paper: 5 mag brighter than the TRGB, per "
        "galaxy)",
    )
    mag_max: float = Field(
        99.0, description="reference: F814W at most this, mag (the paper: 3 mag brighter than the TRGB)"
    )


class DetectionParameters(CatalogCuts):
    nsigma: float = Field(5.0, gt=0, description="source detection threshold on the S/N map, sigma")
    fwhm_arcsec: float = Field(
        0.0, ge=0, le=5, description="PSF FWHM for detection, arcsec; 0 = 1.03 lambda/D of the band"
    )
    max_sources: int = Field(3000, ge=10, description="brightest sources kept per image")
    min_matches: int = Field(5, ge=3, description="fewest matched stars for a solution")
    search_radius_arcsec: float = Field(
        2.5, gt=0, le=60, description='wide pass: largest offset searched, arcsec (guide-star errors reach ~1")'
    )
    tolerance_wide_arcsec: float = Field(
        0.2, gt=0, le=10, description="wide pass: match tolerance and vote bin, arcsec"
    )
    tolerance_strict_arcsec: float = Field(0.05, gt=0, le=5, description="strict pass: match tolerance, arcsec")
    clip_sigma: float = Field(3.0, gt=0, description="residual clip of the fit, sigma")


class RelativeParameters(DetectionParameters):
    reference_band: str = Field(
        "", description="band the per-visit shifts are solved on (NIRCam F300M, MIRI F1000W: the paper's)"
    )
    max_sources: int = Field(
        300,
        ge=10,
        description="brightest sources kept per exposure (each dither is matched on its own: 300 per exposure put a "
        "visit's shift far below the catalogue's errors; their 2-D Gaussian centroids are the stage's "
        "main cost)",
    )


class AbsoluteParameters(DetectionParameters):
    max_sources: int = Field(1500, ge=10, description="brightest sources kept per mosaic")
    reference_band: str = Field(
        "",
        description="band the solution is solved on and taken from; empty: each band its own (NIRCam); MIRI: F1000W "
        "for every band",
    )
    rotation: bool = Field(True, description="strict pass fits shift and rotation (tweakreg's rshift); off: shift only")
    require_solution: bool = Field(
        False,
        description="fail the task when there is no catalogue or too few matches (default: keep the relative-only "
        "astrometry and record why)",
    )


#: per-instrument defaults of both stages (tolerances in arcsec, about a pixel wide / a third strict)
INSTRUMENT_DEFAULTS = {
    "nircam": {"reference_band": "F300M", "tolerance_wide_arcsec": 0.15, "tolerance_strict_arcsec": 0.03},
    "miri": {"reference_band": "F1000W", "tolerance_wide_arcsec": 0.3, "tolerance_strict_arcsec": 0.1},
}
ABSOLUTE_DEFAULTS = {
    "nircam": {**INSTRUMENT_DEFAULTS["nircam"], "reference_band": ""},
    "miri": dict(INSTRUMENT_DEFAULTS["miri"]),
}
