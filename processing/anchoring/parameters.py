"""Parameters of the anchoring stage (processing/anchoring/stage.py). Every one can be set per
target, instrument and band in the manifest (``[targets.<t>.parameters.band.F300M.anchoring]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AnchoringParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    reference_band: str | list[str] = Field(
        "",
        description="band anchored to the wide-field images; every other band of the instrument is anchored to it "
        "(NIRCam F300M, MIRI F770W: the paper's); empty: each band to the wide-field images itself. A list ranks "
        "several (e.g. ['F770W', 'F1130W']): the first one observed and anchored is used; where it is missing, "
        "refused, or the band's fit against it fails, the next; a band in the list takes its own place in the rank",
    )
    external_fwhm_arcsec: float = Field(
        0.0,
        ge=0,
        le=60,
        description="resolution of the external fit, arcsec; 0 = each wide-field image's own beam (the paper's "
        'Figure 8: 4")',
    )
    internal_model: Literal["line", "curve"] = Field(
        "curve",
        description="model of the internal fit (a band against its anchored reference band): 'line', the paper's; "
        "'curve': where a quadratic through the binned medians curves significantly (3 sigma), its value at the "
        "reference's zero is the offset (band ratios drift with intensity as the stellar and dust shares change; "
        "on the demo this takes F1000W from +0.06 to within 0.005 MJy/sr of the truth), the line's offset kept in "
        "the uncertainty. External fits are always lines",
    )
    internal_fwhm_arcsec: float = Field(
        2.0, gt=0, le=60, description="common resolution of a band and its reference band for the internal fit, arcsec"
    )
    range_min_mjysr: float = Field(
        0.0,
        description="fitted intensity range of the band being anchored, lower end, MJy/sr (with range_max_mjysr > "
        "range_min_mjysr: used instead of the percentiles)",
    )
    range_max_mjysr: float = Field(
        0.0, description="fitted intensity range, upper end, MJy/sr (0 with range_min 0: the percentiles decide)"
    )
    range_percentiles: list[float] = Field(
        [2.0, 40.0],
        min_length=2,
        max_length=2,
        description="fitted range as percentiles of the band's pixels in the overlap (the faint part: the paper fits "
        "intensities close to zero)",
    )
    n_bins: int = Field(15, ge=3, le=200, description="intensity bins across the range (the paper: 0.1 MJy/sr bins)")
    min_pixels_per_bin: int = Field(20, ge=3, description="fewest pixels for a bin's median to count")
    min_bins: int = Field(5, ge=3, description="fewest bins (after clipping) for a fit")
    clip_sigma: float = Field(3.0, gt=0, description="clipping of bin medians about the line, sigma (the paper: 3)")
    clip_rounds: int = Field(3, ge=0, le=20, description="rounds of clipping (the paper: 3)")
    extrapolation_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="systematic error of extrapolating the relation from the faint end of the fitted range to zero, "
        "as a fraction of the change the line predicts over that stretch (the synthetic galaxies: 9-16%)",
    )
    max_uncertainty_mjysr: float = Field(
        0.25,
        gt=0,
        description="an offset less certain than this (bootstrap, line fit and the curvature of the relation "
        "combined), MJy/sr, is not applied: the image is not used and the reason recorded",
    )
    n_bootstrap: int = Field(200, ge=0, le=5000, description="bootstrap resamplings for the uncertainty (0: none)")
    bootstrap_block_beams: float = Field(
        3.0, gt=0, description="side of the bootstrap's spatial blocks, in beams of the fit's resolution"
    )
    reference_sky: bool = Field(
        True,
        description="measure each wide-field image's own zero from its sky beyond sky_radius_arcsec and subtract it "
        "(the paper's 'additional round of background fitting'); false: the image's zero is trusted as "
        "it is",
    )
    sky_radius_arcsec: float = Field(
        540.0, gt=0, description="wide-field image pixels farther than this from the target centre are sky, arcsec"
    )

    require_anchor: bool = Field(
        False,
        description="fail the task when no offset could be solved (default: the band keeps its level, the header and "
        "the table say why)",
    )

    def reference_bands(self) -> list[str]:
        """``reference_band`` as a ranked list, upper case (empty: no reference band)."""
        bands = [self.reference_band] if isinstance(self.reference_band, str) else self.reference_band
        return [b.upper() for b in bands if b]


#: per instrument: the reference band (the paper's)
INSTRUMENT_DEFAULTS = {
    "nircam": {"reference_band": "F300M"},
    "miri": {"reference_band": "F770W"},
}
