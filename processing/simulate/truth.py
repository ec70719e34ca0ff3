"""Read the truth of a synthetic program (see :mod:`processing.simulate.generate` for the layout).

``truth/truth.json``::

    format, seed, size, program, crds_context, effects {name: bool}
    bands     {band: instrument, photmjsr, psf_fwhm_arcsec, absolute_background_mjysr (0: the
               true sky has no background), miri_background_start_mjysr, lyot_offset_mean_mjysr,
               nircam_sky_mjysr}
    targets   {target: ra, dec, tiles (arcsec offsets), late_nircam}
    visits    {jwPPPPPOOOVVV: target, pointing_error_arcsec [east, north]}
    external  {target: {survey: file, proxy_band, slope, background_mjysr, fwhm_arcsec, ...},
               refcat: {file, n_sources, position_error_mas}}
    psf       {band: file, fwhm_arcsec, table2_fwhm_arcsec, pixscale_arcsec, oversample}
    exposures {basename: target, band, kind (science|off), visit, tile, dither, mjd_start,
               instrument, background_level_mjysr, background_epoch, lyot_offset_mjysr,
               nircam_sky_mjysr, stripe_rms_dns, n_cosmic_rays}

``truth/exposures/<basename>_truth.fits``: STRIPES (rows x amplifiers, DN/s, NIRCam), CRAYS
(Y, X, GROUP, AMPLITUDE_DN) and BKG (MJy/sr, the injected background image on the exposure's
pixels). ``truth/galaxy_<target>.json`` holds the analytic sky model, so the true sky can be
evaluated at any position (:meth:`Truth.sky`).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from processing.simulate import detectors as D
from processing.simulate.sky import Field


class Truth:
    def __init__(self, program_dir: str | Path):
        self.root = Path(program_dir)
        self.data = json.loads((self.root / "truth" / "truth.json").read_text())
        self.index = json.loads((self.root / "program.json").read_text())

    @property
    def exposures(self) -> dict:
        return self.data["exposures"]

    @functools.cache
    def galaxy(self, target: str):
        from processing.simulate.generate import galaxy_from_dict

        return galaxy_from_dict(json.loads((self.root / "truth" / f"galaxy_{target}.json").read_text()))

    @functools.cache
    def off_field(self, target: str) -> Field:
        d = json.loads((self.root / "truth" / f"offfield_{target}.json").read_text())
        return Field(d["ra"], d["dec"], np.asarray(d["bg_galaxies"]), np.asarray(d["stars"]))

    def sky(self, target: str, band: str, ra, dec) -> np.ndarray:
        """True surface brightness (MJy/sr) of a target at (ra, dec) degrees."""
        return self.galaxy(target).surface_brightness(band, ra, dec)

    def planned(self, basename: str):
        from processing.simulate.program import plan_program

        plan = {e.basename: e for e in plan_program(self.index["bands"], self.data["size"])}
        return plan[basename]

    def exposure_sky(self, basename: str) -> np.ndarray:
        """True sky (no background) on the exposure's pixels at its true pointing."""
        from processing.simulate.generate import true_exposure_sky

        exp = self.planned(basename)
        sub = D.subarray(D.FILTERS[exp.band]["detector"], self.data["size"])
        source = self.galaxy(exp.target) if exp.kind == "science" else self.off_field(exp.target)
        return true_exposure_sky(exp, sub, self.data["visits"][exp.visit_id]["pointing_error_arcsec"], source)

    def injected(self, basename: str) -> dict:
        from astropy.io import fits

        out = {}
        with fits.open(self.root / "truth" / "exposures" / f"{basename}_truth.fits") as hdul:
            for h in hdul[1:]:
                out[h.name] = np.array(h.data) if h.name != "CRAYS" else np.array(h.data.tolist())
        return out

    def file(self, basename: str) -> Path:
        rec = next(e for e in self.index["exposures"] if Path(e["file"]).name.startswith(basename))
        return self.root / rec["file"]
