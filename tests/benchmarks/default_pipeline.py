"""jwst at its defaults (detector1, image2, image3; skymatch off) on a program without any
instrumental effect gives the true sky back: the synthetic CRDS context and the truth are one
consistent calibration chain. The test suite checks one band (F770W, tests/processing/
test_simulate.py); `make bench` checks every band of the clean program."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: bands `make bench` checks (the test suite: F770W)
BANDS = ("F300M", "F770W")


def recovered_flux(program: Path, mosaic: Path, target: str, band: str) -> dict:
    """Median of mosaic / true sky over the galaxy (above its 20th percentile, away from the
    drizzled edge): ``{"ratio", "pixels", "crds_context"}``."""
    from scipy.ndimage import binary_erosion
    from stdatamodels.jwst import datamodels

    from processing.simulate.truth import Truth

    with datamodels.open(str(mosaic)) as m:
        ny, nx = m.data.shape
        y, x = np.mgrid[0:ny, 0:nx]
        ra, dec = m.meta.wcs(x, y)
        true = Truth(program).sky(target, band, ra, dec)
        inside = binary_erosion(np.isfinite(m.data) & (m.wht > 0), iterations=5)
        good = inside & (true > np.percentile(true[inside], 20))
        return {
            "ratio": float(np.median(m.data[good] / true[good])),
            "pixels": int(good.sum()),
            "crds_context": m.meta.ref_file.crds.context_used,
        }


def clean_defaults(outdir: Path, bands=BANDS, seed: int = 3) -> tuple[Path, dict]:
    """A clean program of ``bands`` (no noise, backgrounds, stripes, cosmic rays, pointing
    errors) and jwst's defaults on its synth1, skymatch off (with emission filling the field it
    subtracts real emission, the paper's section 3.5): (program, run_default_pipeline result)."""
    from processing.simulate.default_pipeline import LV3_DEFAULT_PARAMS, run_default_pipeline
    from processing.simulate.exposures import Effects
    from processing.simulate.generate import simulate_program

    program = Path(outdir) / "program"
    simulate_program(program, size="demo", seed=seed, bands=list(bands), effects=Effects.none())
    params = {**LV3_DEFAULT_PARAMS, "skymatch": {"skip": True}}
    return program, run_default_pipeline(program, Path(outdir) / "default", targets=["synth1"], lv3_params=params)


def measure(outdir: Path, bands=BANDS) -> dict:
    """``band -> recovered_flux`` of the clean program's synth1 mosaics at jwst's defaults."""
    program, result = clean_defaults(outdir, bands)
    return {
        band: recovered_flux(program, mosaic, "synth1", band) for band, mosaic in result["mosaics"]["synth1"].items()
    }
