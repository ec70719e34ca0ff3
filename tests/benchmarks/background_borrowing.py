"""The paper's Figure 3 experiment on the synthetic program.

A target whose own MIRI off-fields were observed months after its science (``synth2``, the
IC 5332 case) is processed three ways: its own late off-fields, its own and the lender's
together, and the lender's only (``synth1``, observed minutes before). For each mosaic we
report the paper's measure (sigma-clipped RMS outside a source mask made from the
borrowed-only mosaic) and, because the truth is known, the RMS of (mosaic - true sky) after
removing its median: the background error itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VARIANTS = ("own", "both", "borrowed")
BLOCK = 20


def run_variants(program: Path, workdir: Path, band: str, cache: Path | None = None, variants=None) -> dict[str, Path]:
    from processing.executor import Engine
    from processing.pipeline import build_graph
    from release.manifest import load_manifest
    from tests.conftest import write_manifest

    out = {}
    workdir.mkdir(parents=True, exist_ok=True)
    # one band alone: its astrometry and anchoring solved on itself, not on the MIRI reference
    # bands (which would have to be processed three times too); the measure removes each
    # mosaic's median and reads the astrometry status, so neither changes what it compares
    alone = (
        '\n[parameters.instrument.miri.astrometry]\nreference_band = ""\n'
        '[parameters.instrument.miri.anchoring]\nreference_band = ""\n'
        "[products]\nconvolved_fwhm_arcsec = []\n"
    )  # no PSF matching: the measure reads the mosaic
    for variant in variants or VARIANTS:
        manifest = write_manifest(workdir / f"fig3-{variant}.toml", program, borrow=variant, extra=alone)
        lm = load_manifest(manifest)
        engine = Engine(
            lm, build_graph(lm, ["synth2"], [band]), workdir / variant, cache_dir=cache or workdir / "cache"
        )
        summary = engine.run()
        if not summary.ok:
            raise RuntimeError(f"{variant}: " + "; ".join(r.error or "" for r in summary.results.values() if r.error))
        out[variant] = next(p for p in summary.products if p.name.endswith("_i2d.fits"))
    return out


def _absolute(path: Path) -> bool:
    from astropy.io import fits

    return fits.getheader(path, 0).get("HLSPDAST") == "absolute"


def measure(program: Path, mosaics: dict[str, Path], band: str) -> dict:
    from astropy.stats import sigma_clip, sigma_clipped_stats
    from reproject import reproject_interp
    from scipy.ndimage import binary_dilation
    from stdatamodels.jwst import datamodels

    from processing.simulate.truth import Truth

    truth = Truth(program)
    ref = datamodels.open(str(mosaics["borrowed"]))
    ny, nx = ref.data.shape
    y, x = np.mgrid[0:ny, 0:nx]
    ra, dec = ref.meta.wcs(x, y)
    # the truth where each pixel really looked: at its position if the astrometry stages
    # corrected the mosaic, else at its nominal position plus the visit's pointing error
    visits = {
        e["visit"]
        for e in truth.exposures.values()
        if e["target"] == "synth2" and e["band"] == band and e["kind"] == "science"
    }
    (visit,) = visits
    de, dn = truth.data["visits"][visit]["pointing_error_arcsec"]
    if _absolute(mosaics["borrowed"]):
        de = dn = 0.0
    true = truth.sky("synth2", band, ra + de / 3600 / np.cos(np.deg2rad(dec)), dec + dn / 3600)
    # the paper's source mask: from the close-in-time (borrowed-only) mosaic
    _, med, std = sigma_clipped_stats(ref.data[np.isfinite(ref.data)], sigma=3)
    sources = binary_dilation(np.nan_to_num(ref.data, nan=med) > med + 3 * std, iterations=3)
    results = {}
    for variant, path in mosaics.items():
        m = datamodels.open(str(path))
        data = (
            m.data
            if m.data.shape == ref.data.shape
            else reproject_interp((m.data, m.meta.wcs.to_fits_sip()), ref.meta.wcs.to_fits_sip(), (ny, nx))[0]
        )
        good = np.isfinite(data) & (m.wht > 0 if m.data.shape == ref.data.shape else True)
        paper_rms = float(np.std(sigma_clip(data[good & ~sources], sigma=3).compressed()))
        err = np.where(good, data - true, np.nan)
        # the background is large-scale: medians of 20x20-pixel (2.2") blocks beat down pixel
        # noise and PSF-scale sampling differences between drizzle and the analytic truth
        b = BLOCK
        blocks = (
            err[: ny // b * b, : nx // b * b]
            .reshape(ny // b, b, nx // b, b)
            .transpose(0, 2, 1, 3)
            .reshape(ny // b, nx // b, -1)
        )
        full = np.isfinite(blocks).mean(axis=2) > 0.9
        block_med = np.nanmedian(blocks[full], axis=1)
        err_rms = float(np.std(sigma_clip(block_med - np.median(block_med), sigma=4).compressed()))
        results[variant] = {
            "sky_rms_mjysr": round(paper_rms, 3),
            "background_error_rms_mjysr": round(err_rms, 3),
            "background_offset_mjysr": round(float(np.nanmedian(err)), 3),
        }
    return results
