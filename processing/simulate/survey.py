"""A header-only synthetic program at survey size, for planning at scale (``hlsp simulate
OUTDIR --size cosmos --headers-only``).

COSMOS-Web (JWST GO 1727) is the largest JWST imaging program: 0.54 deg2 tiled by NIRCam
in four filters, F115W and F150W in the short-wavelength channel (8 detectors, NRCA1-4 and
NRCB1-4) and F277W and F444W in the long-wavelength channel (NRCALONG, NRCBLONG), taken in
pairs (F115W with F277W, F150W with F444W), 4 dithers per pointing: 12,880 detector
exposures in all. This module writes such a program's ``*_uncal.fits`` files with the
primary header only (the keywords the engine reads to assign exposures to targets and bands:
TARGPROP, INSTRUME, DETECTOR, FILTER, PUPIL, EXPRIPAR, PROGRAM, OBSERVTN, VISIT, EXPSTART, and
the pointing), and a manifest for it, so that the task graph, the cache keys and ``hlsp plan``
can be built and timed without pixels. There is no science array: the files cannot be
processed, and the manifest says so in a comment; they are for the engine's bookkeeping only.

The pointings tile a square of ``area_deg2`` centred on COSMOS (RA 150.12, Dec +2.21) in a
grid, visits are in time order, and ``n_exposures`` (default 12,880) sets the size: the
number of pointings is what gives that many detector files (10 per dither and filter pair).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

#: the filter pairs taken together (short, long wavelength channel)
PAIRS = (("F115W", "F277W"), ("F150W", "F444W"))
SW_DETECTORS = ("NRCA1", "NRCA2", "NRCA3", "NRCA4", "NRCB1", "NRCB2", "NRCB3", "NRCB4")
LW_DETECTORS = ("NRCALONG", "NRCBLONG")
DITHERS = 4
PROGRAM = 1727
TARGET = "COSMOS"
CENTRE = (150.1191, 2.2058)
#: files per pointing: 4 dithers x 2 filter pairs x (8 SW + 2 LW detectors)
FILES_PER_POINTING = DITHERS * len(PAIRS) * (len(SW_DETECTORS) + len(LW_DETECTORS))
COSMOS_EXPOSURES = 12_880


def pointings(n_exposures: int, area_deg2: float = 0.54) -> list[tuple[float, float]]:
    """Pointing centres (RA, Dec in degrees) of a grid covering ``area_deg2`` around COSMOS,
    as many as make ``n_exposures`` detector files (rounded up)."""
    n = max(1, math.ceil(n_exposures / FILES_PER_POINTING))
    side = math.sqrt(area_deg2)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    ra0, dec0 = CENTRE
    out = []
    for k in range(n):
        i, j = divmod(k, cols)
        dec = dec0 - side / 2 + (i + 0.5) * side / rows
        ra = ra0 - side / 2 / math.cos(math.radians(dec0)) + (j + 0.5) * side / cols / math.cos(math.radians(dec0))
        out.append((ra, dec))
    return out


def write_survey_headers(outdir: str | Path, n_exposures: int = COSMOS_EXPOSURES, area_deg2: float = 0.54) -> dict:
    """Write ``n_exposures`` header-only NIRCam uncal files under ``outdir/uncal`` and a
    manifest ``outdir/survey.toml`` naming them; return ``{"exposures", "pointings", "bands",
    "manifest"}``. Files are written one at a time (nothing of the program is kept in memory)."""
    from astropy.io import fits

    outdir = Path(outdir)
    uncal = outdir / "uncal"
    uncal.mkdir(parents=True, exist_ok=True)
    written = 0
    mjd = 59935.0
    centres = pointings(n_exposures, area_deg2)
    for p, (ra, dec) in enumerate(centres):
        obs, visit = 1 + p // 100, 1 + p % 100
        for pair_index, pair in enumerate(PAIRS):
            for dither in range(1, DITHERS + 1):
                for band, detectors in ((pair[0], SW_DETECTORS), (pair[1], LW_DETECTORS)):
                    for det in detectors:
                        if written >= n_exposures:
                            break
                        name = f"jw{PROGRAM:05d}{obs:03d}{visit:03d}_{2 + pair_index:02d}101_{dither:05d}_{det.lower()}"
                        h = fits.Header()
                        h["TELESCOP"] = "JWST"
                        h["INSTRUME"] = "NIRCAM"
                        h["DETECTOR"] = det
                        h["FILTER"] = band
                        h["PUPIL"] = "CLEAR"
                        h["TARGPROP"] = TARGET
                        h["TARG_RA"], h["TARG_DEC"] = round(ra, 6), round(dec, 6)
                        h["PROGRAM"] = f"{PROGRAM:05d}"
                        h["OBSERVTN"] = f"{obs:03d}"
                        h["VISIT"] = f"{visit:03d}"
                        h["VISITGRP"] = f"{2 + pair_index:02d}"
                        h["EXPOSURE"] = f"{dither:05d}"
                        h["EXPRIPAR"] = "PRIME"
                        h["EXP_TYPE"] = "NRC_IMAGE"
                        h["EXPSTART"] = mjd
                        h["PA_V3"] = 293.0
                        h["HDRONLY"] = (True, "header-only synthetic file: no science array")
                        fits.PrimaryHDU(header=h).writeto(uncal / f"{name}_uncal.fits")
                        written += 1
                mjd += 300.0 / 86400.0  # one dither's exposure time, all detectors at once
    bands = sorted({b for pair in PAIRS for b in pair})
    catalog = _write_catalog(outdir / "external" / "cosmos_refcat.ecsv")
    manifest = outdir / "survey.toml"
    manifest.write_text(_manifest(outdir, bands, catalog))
    return {"exposures": written, "pointings": len(centres), "bands": bands, "manifest": manifest}


def _write_catalog(path: Path) -> Path:
    """An (empty-of-sources) absolute-astrometry catalogue in the format the astrometry stage
    reads: the manifest requires one per target, and only its content hash enters the keys."""
    from astropy.table import Table

    path.parent.mkdir(parents=True, exist_ok=True)
    Table({"ra": [CENTRE[0]], "dec": [CENTRE[1]]}).write(path, format="ascii.ecsv", overwrite=True)
    return path


def _manifest(outdir: Path, bands: list[str], catalog: Path) -> str:
    return f'''# A header-only survey-size program (processing/simulate/survey.py): for planning and
# timing the engine's bookkeeping at scale. The uncal files have no science array: a run of
# this manifest cannot process them.
schema_version = 1

[release]
project = "synth-survey"
title = "Header-only survey-size synthetic program"
version = "1.0.0"
doi = "10.17909/synthetic-survey"
lead = "Release System Benchmarks"
pi = "Release System Benchmarks"

[release.contact]
name = "Release System Benchmarks"
email = "bench@example.org"

[pins]
jwst = "3.0.0"
crds_context = "jwst_9001.pmap"
crds_mode = "remote"

[program]
proposal_ids = [{PROGRAM}]
instruments = ["nircam"]
bands = {json.dumps(bands)}

[program.data]
source = "local"
path = "{outdir.resolve()}"

[products]
convolved_fwhm_arcsec = []

[targets.cosmos]
designation = "{TARGET}"
ra = {CENTRE[0]}
dec = {CENTRE[1]}
astrometry_catalog = "{catalog.resolve()}"
'''
