"""Relative astrometry (the paper's section 3.3): one x/y shift
per visit (mosaic tile), solved on a reference band (NIRCam F300M, MIRI F1000W) and applied to
every exposure of that visit in every band of the instrument, before level matching and
level 3.

All exposures of a visit share one guide star, so one shift serves every band. The shift is
solved by matching the point sources detected in the visit's reference-band exposures
(each dither matched on its own, the matches fitted together, shift only: the paper found
rotations made it worse) against a common frame: the target's reference catalogue when the
manifest names one (every tile then lands on the same frame, however little the tiles
overlap), otherwise the sources of the visit with the most detections (tiles aligned to
each other; the absolute stage places the mosaic later). A visit with too few matches keeps
its pointing, and the table says why.

Outputs: every member's ``<exposure>_cal.fits`` (gwcs corrected; header HLSPDRE/HLSPDRN =
shift east/north applied, arcsec, HLSPDRM = matches, HLSPRELS = status) and
``<target>_<instrument>_visit_shifts.ecsv`` (one row per visit).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processing.astrometry.catalog import cuts_from, image_sources, read_catalog, reference_in
from processing.astrometry.match import Solution, solve, to_tangent
from processing.astrometry.parameters import INSTRUMENT_DEFAULTS, RelativeParameters
from processing.instruments import PIXEL_SCALE_ARCSEC, channel_of
from processing.stages import Input, ModelParameters, Stage

log = logging.getLogger(__name__)


@dataclass
class ExposureInfo:
    path: Path
    name: str
    band: str
    visit: str
    ra: float  # centre of the exposure, deg (its own WCS)
    dec: float
    radius: float  # centre to farthest corner, arcsec


def exposure_info(path: Path) -> ExposureInfo:
    """Band, visit and footprint of a cal file, from its header and WCS (pixels not read)."""
    from stdatamodels.jwst import datamodels

    with datamodels.open(path) as m:
        ny, nx = m.data.shape
        o = m.meta.observation
        visit = o.visit_id or f"{o.program_number}{o.observation_number}{o.visit_number}"
        xs = np.array([(nx - 1) / 2, 0, nx - 1, nx - 1, 0], float)
        ys = np.array([(ny - 1) / 2, 0, 0, ny - 1, ny - 1], float)
        ra, dec = m.meta.wcs(xs, ys)
        band = str(m.meta.instrument.filter).upper()
    x, y = to_tangent(ra, dec, ra[0], dec[0])
    name = path.name[: -len("_cal.fits")] if path.name.endswith("_cal.fits") else path.stem
    return ExposureInfo(path, name, band, str(visit), float(ra[0]), float(dec[0]), float(np.hypot(x, y).max()))


def measure(path: Path, params: dict) -> dict:
    """Point sources (sky positions) of one cal file."""
    from stdatamodels.jwst import datamodels

    with datamodels.open(path) as m:
        band = str(m.meta.instrument.filter).upper()
        bad = (np.asarray(m.dq) & 1).astype(bool)
        return image_sources(
            np.asarray(m.data, float),
            np.asarray(m.err, float),
            bad,
            m.meta.wcs,
            band,
            PIXEL_SCALE_ARCSEC[channel_of(band)],
            params,
        )


def solve_visits(
    ref_exposures: list[ExposureInfo], sources: dict[str, dict], catalog: dict | None, p: RelativeParameters
) -> dict[str, tuple[Solution, float, float, str]]:
    """One solution per visit: ``visit -> (solution, ra0, dec0, frame)`` with the shift (east,
    north, arcsec) about the tangent point ``(ra0, dec0)``; ``frame`` is ``catalog`` or the
    anchor visit's id."""
    visits: dict[str, list[ExposureInfo]] = {}
    for e in ref_exposures:
        visits.setdefault(e.visit, []).append(e)
    out: dict[str, tuple[Solution, float, float, str]] = {}
    kw = dict(
        search_radius=p.search_radius_arcsec,
        tolerance_wide=p.tolerance_wide_arcsec,
        tolerance_strict=p.tolerance_strict_arcsec,
        rotate=False,
        min_matches=p.min_matches,
        clip=p.clip_sigma,
    )
    if catalog is not None:
        for v, exps in sorted(visits.items()):
            ra0, dec0 = float(np.mean([e.ra for e in exps])), float(np.mean([e.dec for e in exps]))
            radius = max(e.radius for e in exps) + max(np.hypot(*to_tangent(e.ra, e.dec, ra0, dec0)) for e in exps)
            ref_xy, _ = reference_in(catalog, ra0, dec0, radius + p.search_radius_arcsec)
            groups = [
                np.column_stack(to_tangent(sources[e.name]["ra"], sources[e.name]["dec"], ra0, dec0)) for e in exps
            ]
            sol, *_ = solve(groups, ref_xy, **kw)
            out[v] = (sol, ra0, dec0, "catalog")
        return out
    # no catalogue: align the visits to the one with the most detections (its first exposure)
    counts = {v: sum(len(sources[e.name]["x"]) for e in exps) for v, exps in visits.items()}
    anchor = max(sorted(counts), key=lambda v: counts[v])
    a = visits[anchor][0]
    ra0, dec0 = a.ra, a.dec
    anchor_xy = np.column_stack(to_tangent(sources[a.name]["ra"], sources[a.name]["dec"], ra0, dec0))
    for v, exps in sorted(visits.items()):
        if v == anchor:
            out[v] = (
                Solution(
                    status="shift",
                    n_matches=len(anchor_xy),
                    n_source=len(anchor_xy),
                    n_reference=len(anchor_xy),
                    rms_arcsec=0.0,
                ),
                ra0,
                dec0,
                f"anchor {anchor}",
            )
            continue
        groups = [np.column_stack(to_tangent(sources[e.name]["ra"], sources[e.name]["dec"], ra0, dec0)) for e in exps]
        sol, *_ = solve(groups, anchor_xy, **kw)
        out[v] = (sol, ra0, dec0, f"visit {anchor}")
    return out


def run(inputs: dict, outdir: Path, params: dict, context: dict) -> list[Path]:
    """Solve one shift per visit on the reference band; write every member's corrected cal
    file and the visit table."""
    from astropy.table import Table
    from stdatamodels.jwst import datamodels

    from processing.astrometry.wcs import correct_exposure
    from processing.fileio import save_model_atomic

    t0 = time.time()
    outdir = Path(outdir)
    p = RelativeParameters(**params)
    ref_band = p.reference_band.upper()
    exposures = [exposure_info(Path(f)) for f in inputs["cal"]]
    catalog = read_catalog(inputs["catalog"][0], cuts_from(params)) if inputs.get("catalog") else None
    bands = sorted({e.band for e in exposures}, key=_wavelength)
    if ref_band not in bands and bands:
        # the target was not observed in the reference band (a patch leaving it out is refused
        # by the engine): the sharpest band stands in, and the table says so
        log.warning(
            "%s %s: reference band %s not observed; solving on %s",
            context["target"],
            context["instrument"],
            ref_band,
            bands[0],
        )
        ref_band = bands[0]
    ref_exposures = [e for e in exposures if e.band == ref_band]
    sources = {e.name: measure(e.path, params) for e in ref_exposures}
    solutions = solve_visits(ref_exposures, sources, catalog, p) if ref_exposures else {}
    written = []
    for e in exposures:
        out = outdir / f"{e.name}_cal.fits"
        entry = solutions.get(e.visit)
        if entry is None or not entry[0].ok:
            shutil.copyfile(e.path, out)
            _record(out, 0.0, 0.0, 0, entry[0].status if entry else f"reference band {ref_band} not in this run")
            written.append(out)
            continue
        sol, ra0, dec0, _ = entry
        with datamodels.open(e.path) as m:
            correct_exposure(m, 0.0, sol.shift_arcsec, ra0, dec0)
            save_model_atomic(m, out)
        _record(out, sol.shift_arcsec[0], sol.shift_arcsec[1], sol.n_matches, "shift")
        written.append(out)
    rows = []
    for v in sorted({e.visit for e in exposures}):
        sol, ra0, dec0, frame = solutions.get(
            v, (Solution(status=f"reference band {ref_band} not in this run"), np.nan, np.nan, "")
        )
        rows.append(
            {
                "visit": v,
                "reference_band": ref_band,
                "frame": frame,
                "status": sol.status,
                "applied": sol.ok,
                "shift_east_mas": 1000 * sol.shift_arcsec[0],
                "shift_north_mas": 1000 * sol.shift_arcsec[1],
                "error_east_mas": 1000 * sol.shift_err_arcsec[0],
                "error_north_mas": 1000 * sol.shift_err_arcsec[1],
                "n_matches": sol.n_matches,
                "rms_mas": 1000 * sol.rms_arcsec,
                "n_sources": sol.n_source,
                "n_reference": sol.n_reference,
                "ra0": ra0,
                "dec0": dec0,
                "n_exposures": sum(1 for e in exposures if e.visit == v),
            }
        )
        if not sol.ok:
            log.warning(
                "%s %s visit %s: no relative shift (%s)", context["target"], context["instrument"], v, sol.status
            )
    table = Table(rows=rows) if rows else Table()
    table.meta.update(
        {
            "target": context["target"],
            "instrument": context["instrument"],
            "reference_band": ref_band,
            "catalog": catalog["file"] if catalog else None,
            "catalog_cuts_applied": catalog["applied"] if catalog else [],
            "catalog_cuts_missing_column": catalog["missing"] if catalog else [],
            "seconds": round(time.time() - t0, 2),
        }
    )
    tpath = outdir / f"{context['target']}_{context['instrument']}_visit_shifts.ecsv"
    table.write(tpath, format="ascii.ecsv", overwrite=True)
    return written + [tpath]


def _wavelength(band: str) -> int:
    return int("".join(ch for ch in band[1:] if ch.isdigit()) or 0)


def _record(path: Path, east: float, north: float, n: int, status: str) -> None:
    """What this stage did to one exposure, in its primary header (HLSPD* records are
    averaged into the mosaic by level 3 and carried into the released img.fits)."""
    from astropy.io import fits

    with fits.open(path, mode="update") as hdul:
        h = hdul[0].header
        h["HLSPDRE"] = (round(float(east), 5), "relative astrometry: shift east, arcsec")
        h["HLSPDRN"] = (round(float(north), 5), "relative astrometry: shift north, arcsec")
        h["HLSPDRM"] = (int(n), "relative astrometry: matched stars")
        h["HLSPRELS"] = (status[:60], "relative astrometry status")


STAGE = Stage(
    name="relative_astrometry",
    unit="target_instrument",
    inputs=(
        Input("cal", "members", "lv2", "_cal.fits"),
        Input("catalog", "manifest_file", files="processing.astrometry.catalog:catalog_files", optional=True),
    ),
    outputs=("_cal.fits", "_visit_shifts.ecsv"),
    run="processing.astrometry.relative:run",
    parameters=ModelParameters(RelativeParameters, INSTRUMENT_DEFAULTS),
    refines=("lv2", "_cal.fits"),
    memory_gb=2.0,
    description="relative astrometry: one shift per visit solved on the reference band (against the reference "
    "catalogue, else the best-populated visit) and applied to every exposure of the visit in every band "
    "of the instrument",
)
