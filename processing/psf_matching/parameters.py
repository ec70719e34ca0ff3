"""Parameters of the PSF-matching stage (processing/psf_matching/stage.py). Every one can be set
per target, instrument and band in the manifest (``[parameters.band.F2100W.psf_matching]``).
The resolutions themselves are the manifest's ``products.convolved_fwhm_arcsec``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PsfMatchingParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_negative_power: float = Field(
        1.0,
        gt=0,
        le=5,
        description="largest W- (the kernel's negative weight, Aniano et al. 2011 eq. 21) accepted; a resolution "
        "whose kernel needs more is refused for the band, naming the finest it allows (1.0: the paper's "
        "'aggressive' limit; 0.5 safe; 0.3 very safe)",
    )
    circularise: bool = Field(
        True,
        description="build kernels from the PSF averaged over rotations (Aniano: kernels then do not depend on the "
        "telescope's orientation)",
    )
    min_coverage: float = Field(
        0.5,
        gt=0,
        le=1,
        description="an output pixel needs at least this fraction of the kernel's weight on valid input pixels (0.5: "
        "holes smaller than the kernel are filled, the map's edge stays where it is)",
    )
    tile_pixels: int = Field(
        2048, ge=256, le=16384, description="side of the tiles the mosaic is convolved in (memory: ~0.6 GB at 2048)"
    )
    noise_curve_points: int = Field(
        6,
        ge=0,
        le=30,
        description="Gaussian resolutions between the PSF and the coarsest release resolution at which the noise is "
        "measured (the paper's Figure 10; 0: none)",
    )
    noise_cutout_pixels: int = Field(
        800, ge=64, le=8192, description="side of the central cutout the noise curve is measured on, pixels"
    )
