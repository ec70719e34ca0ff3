"""Absolute astrometry after level 3, and its back-propagation to the exposures (the paper's
sections 3.8 and 4.3.2).

Per target and band: point sources detected in a mosaic are matched to the target's external
reference catalogue (after the paper's cuts) in two passes: a wide search with a loose
tolerance, shift only, then a strict tolerance with shift and rotation. NIRCam solves each band
on its own mosaic; MIRI solves on F1000W (``reference_band``) and applies that solution to
every MIRI band (the longer bands have too few point sources). The solution is applied:

- to the mosaic, exactly (its gwcs and FITS WCS; processing/astrometry/wcs.py);
- to every exposure of the band (the last refined cal files: destriped, level-matched): the
  tweakback files, one tarball per target and band (MAST product type ``tweakback``).

No catalogue, or too few matches: the mosaic keeps its relative astrometry, and the header
(HLSPDAST) and the table say why (``require_solution = true`` makes it a failure instead).

Outputs: ``<product>_i2d.fits`` (the corrected mosaic; header HLSPDAST status, HLSPDAE/HLSPDAN
shift east/north in mas, HLSPDART rotation in deg, HLSPDAM matches, HLSPDARM RMS in mas,
HLSPDAB band solved on), ``<product>_tweakback.tar.gz``, ``<product>_astrometry.ecsv`` (the
matched sources of this band before and after, with the solution in its meta) and
``<product>_astrometry.png`` (the residuals, as the paper's Figures 12 and 13).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from processing.astrometry.catalog import cuts_from, image_sources, read_catalog, reference_in
from processing.astrometry.match import Solution, match_nearest, solve, to_tangent
from processing.astrometry.parameters import ABSOLUTE_DEFAULTS, AbsoluteParameters
from processing.errors import WorkFailed
from processing.stages import Input, ModelParameters, Product, Stage

log = logging.getLogger(__name__)


def mosaic_sources(path: Path, band: str, params: dict) -> tuple[dict, float, float, float]:
    """Point sources of a level-3 mosaic: ``(sources, ra0, dec0, radius)`` with the mosaic's
    tangent point (CRVAL) and the distance from it to the farthest corner (arcsec)."""
    from stdatamodels.jwst import datamodels

    with datamodels.open(path) as m:
        sci, err = np.asarray(m.data, float), np.asarray(m.err, float)
        bad = ~np.isfinite(sci) | (np.asarray(m.wht) <= 0) | ((np.asarray(m.dq) & 1) > 0)
        info = m.meta.wcsinfo
        ra0, dec0 = float(info.crval1), float(info.crval2)
        scale = (
            abs(float(info.cdelt1)) * 3600.0
            if info.cdelt1
            else float(np.sqrt(abs(np.linalg.det(np.array([[info.pc1_1, info.pc1_2], [info.pc2_1, info.pc2_2]])))))
            * 3600.0
        )
        ny, nx = sci.shape
        cra, cdec = m.meta.wcs(np.array([0, nx - 1, nx - 1, 0.0]), np.array([0, 0, ny - 1, ny - 1.0]))
        found = image_sources(sci, err, bad, m.meta.wcs, band, scale, params)
    x, y = to_tangent(cra, cdec, ra0, dec0)
    return found, ra0, dec0, float(np.hypot(x, y).max())


def solve_mosaic(
    path: Path, band: str, catalog: dict, p: AbsoluteParameters, params: dict
) -> tuple[Solution, float, float, dict]:
    """The two-pass solution of one mosaic against the catalogue, about the mosaic's CRVAL;
    also returns the mosaic's sources."""
    found, ra0, dec0, radius = mosaic_sources(path, band, params)
    ref_xy, _ = reference_in(catalog, ra0, dec0, radius + p.search_radius_arcsec)
    src_xy = np.column_stack(to_tangent(found["ra"], found["dec"], ra0, dec0)) if len(found["ra"]) else np.zeros((0, 2))
    sol, *_ = solve(
        src_xy,
        ref_xy,
        p.search_radius_arcsec,
        p.tolerance_wide_arcsec,
        p.tolerance_strict_arcsec,
        rotate=p.rotation,
        min_matches=p.min_matches,
        clip=p.clip_sigma,
    )
    return sol, ra0, dec0, found


def residuals(found: dict, catalog: dict, sol: Solution, ra0: float, dec0: float, tolerance: float) -> dict:
    """Matched sources of a band against the catalogue, before and after the solution (mas).

    Pairs are the nearest neighbours within ``tolerance`` after the correction (before it,
    guide-star errors of up to an arcsecond make nearest neighbours meaningless)."""
    from processing.astrometry.match import rotation

    src = np.column_stack(to_tangent(found["ra"], found["dec"], ra0, dec0)) if len(found["ra"]) else np.zeros((0, 2))
    after = src @ rotation(sol.theta_rad).T + np.asarray(sol.shift_arcsec) if sol.ok else src
    ref_xy, sel = reference_in(catalog, ra0, dec0, 1e9)
    i, j = match_nearest(after, ref_xy, tolerance)
    return {
        "ra": found["ra"][i],
        "dec": found["dec"][i],
        "ra_ref": catalog["ra"][sel[j]],
        "dec_ref": catalog["dec"][sel[j]],
        "before": 1000 * (ref_xy[j] - src[i]),
        "after": 1000 * (ref_xy[j] - after[i]),
        "snr": found["snr"][i],
    }


def write_corrected(src: Path, out: Path, correct, sol: Solution, ra0: float, dec0: float, record: dict) -> None:
    """``src`` with the solution applied by ``correct`` (processing/astrometry/wcs.py; nothing
    when there is no solution) and the record in its primary header, written to ``out``."""
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    from processing.fileio import save_model_atomic

    with datamodels.open(src) as m:
        if sol.ok:
            correct(m, sol.theta_rad, sol.shift_arcsec, ra0, dec0)
        save_model_atomic(m, out)
    with fits.open(out, mode="update") as hdul:
        for k, v in record.items():
            hdul[0].header[k] = v


def write_tweakback(
    cals: list[Path], tarball: Path, folder: str, sol: Solution, ra0: float, dec0: float, record: dict, scratch: Path
) -> list[str]:
    """Every exposure with the solution applied, in one gzipped tarball under ``folder/``
    (members in name order, owner and times zeroed: the same files give the same bytes).
    Returns the member names."""
    from processing.astrometry.wcs import correct_exposure
    from processing.fileio import remove_scratch, reproducible_tarball

    work = scratch / folder
    work.mkdir(parents=True, exist_ok=True)
    names = []
    for cal in sorted(cals, key=lambda c: Path(c).name):
        out = work / Path(cal).name
        write_corrected(Path(cal), out, correct_exposure, sol, ra0, dec0, record)
        names.append(f"{folder}/{out.name}")
    with reproducible_tarball(tarball) as add:
        for name in names:
            add(name, scratch / name)
    remove_scratch(work)  # the package's own scratch removal: links removed as links
    return names


def header_record(sol: Solution, solve_band: str) -> dict:
    """The solution as primary-header keywords (HLSPD*: carried into the released img.fits)."""
    return {
        "HLSPDAST": ("absolute" if sol.ok else "relative only", "absolute astrometry applied, or relative only"),
        "HLSPDAE": (round(1000 * sol.shift_arcsec[0], 3), "absolute astrometry: shift east, mas"),
        "HLSPDAN": (round(1000 * sol.shift_arcsec[1], 3), "absolute astrometry: shift north, mas"),
        "HLSPDART": (round(float(np.rad2deg(sol.theta_rad)), 6), "absolute astrometry: rotation, deg"),
        "HLSPDAM": (int(sol.n_matches), "absolute astrometry: matched stars"),
        "HLSPDARM": (
            round(1000 * sol.rms_arcsec, 3) if np.isfinite(sol.rms_arcsec) else -1.0,
            "absolute astrometry: RMS per axis, mas",
        ),
        "HLSPDAB": (solve_band, "absolute astrometry solved on this band"),
    }


def plot_residuals(path: Path, res: dict, sol: Solution, title: str) -> None:
    """The paper's Figures 12/13 for one band: matched-source offsets against the reference
    before and after the solution, in mas, with the mean and RMS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), constrained_layout=True)
    for ax, key, label in zip(
        axes, ("before", "after"), ("before (relative astrometry only)", "after absolute astrometry")
    ):
        d = res[key]
        if len(d):
            ax.scatter(d[:, 0], d[:, 1], s=8, c=np.log10(np.maximum(res["snr"], 1)), cmap="viridis")
            m, rms = d.mean(axis=0), np.sqrt(np.mean((d - d.mean(axis=0)) ** 2, axis=0))
            ax.plot(*m, "r+", ms=14, mew=2)
            ax.set_title(
                f"{label}\nmean ({m[0]:.1f}, {m[1]:.1f}) mas, RMS ({rms[0]:.1f}, {rms[1]:.1f}) mas, n={len(d)}",
                fontsize=9,
            )
            lim = max(50.0, float(np.percentile(np.abs(d), 95)) * 1.3)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
        else:
            ax.set_title(f"{label}: no matched sources", fontsize=9)
        ax.axhline(0, color="0.7", lw=0.5)
        ax.axvline(0, color="0.7", lw=0.5)
        ax.set_xlabel("reference - JWST, east (mas)")
        ax.set_ylabel("reference - JWST, north (mas)")
        ax.set_aspect("equal")
    fig.suptitle(f"{title}: {sol.status}", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(inputs: dict, outdir: Path, params: dict, context: dict) -> list[Path]:
    """Solve (or take the reference band's solution), apply to the mosaic and the exposures,
    write the QA table and figure."""
    from astropy.table import Table

    from processing.astrometry.wcs import correct_mosaic

    t0 = time.time()
    outdir = Path(outdir)
    p = AbsoluteParameters(**params)
    band, product, target = context["band"], context["product"], context["target"]
    mosaic = Path(inputs["mosaic"][0])
    solve_on = Path(inputs["reference_mosaic"][0]) if inputs.get("reference_mosaic") else mosaic
    solve_band = p.reference_band.upper() if inputs.get("reference_mosaic") else band
    catalog = read_catalog(inputs["catalog"][0], cuts_from(params)) if inputs.get("catalog") else None
    ra0 = dec0 = float("nan")
    found = None  # the solved mosaic's sources, reused for the QA when it is this band's own
    if catalog is None:
        sol = Solution(status=f"no reference catalogue (targets.{target}.astrometry_catalog): relative astrometry only")
    else:
        sol, ra0, dec0, found = solve_mosaic(solve_on, solve_band, catalog, p, params)
        if solve_on != mosaic:
            found = None
        if not sol.ok:
            sol.status = f"{sol.status}: relative astrometry only"
    if not sol.ok:
        if p.require_solution:
            raise WorkFailed(f"astrometry {target} {band}: {sol.status} (require_solution = true)")
        log.warning("astrometry %s %s: %s", target, band, sol.status)
    record = header_record(sol, solve_band)
    out_mosaic = outdir / f"{product}_i2d.fits"
    write_corrected(mosaic, out_mosaic, correct_mosaic, sol, ra0, dec0, record)
    # QA on this band's own sources (for MIRI bands other than F1000W: the transferred solution)
    res = {
        "ra": np.zeros(0),
        "dec": np.zeros(0),
        "ra_ref": np.zeros(0),
        "dec_ref": np.zeros(0),
        "before": np.zeros((0, 2)),
        "after": np.zeros((0, 2)),
        "snr": np.zeros(0),
    }
    if catalog is not None:
        if found is None or not sol.ok:
            found, mra0, mdec0, _ = mosaic_sources(mosaic, band, params)
        if sol.ok:  # the solution is about (ra0, dec0); evaluate the residuals in that plane
            mra0, mdec0 = ra0, dec0
        res = residuals(
            found, catalog, sol, mra0, mdec0, p.tolerance_strict_arcsec if sol.ok else p.tolerance_wide_arcsec
        )
    table = Table(
        {
            "ra": res["ra"],
            "dec": res["dec"],
            "ra_ref": res["ra_ref"],
            "dec_ref": res["dec_ref"],
            "snr": res["snr"],
            "before_east_mas": res["before"][:, 0],
            "before_north_mas": res["before"][:, 1],
            "after_east_mas": res["after"][:, 0],
            "after_north_mas": res["after"][:, 1],
        }
    )
    after = res["after"]
    table.meta.update(
        {
            "target": target,
            "band": band,
            "solved_on": solve_band,
            "solution": sol.as_dict(),
            "ra0": ra0,
            "dec0": dec0,
            "catalog": catalog["file"] if catalog else None,
            "catalog_cuts_applied": catalog["applied"] if catalog else [],
            "catalog_cuts_missing_column": catalog["missing"] if catalog else [],
            "band_mean_after_mas": [float(v) for v in after.mean(axis=0)] if len(after) else None,
            "band_rms_after_mas": [float(v) for v in after.std(axis=0)] if len(after) else None,
            "n_band_matches": int(len(after)),
        }
    )
    qa_table = outdir / f"{product}_astrometry.ecsv"
    figure = outdir / f"{product}_astrometry.png"
    plot_residuals(figure, res, sol, f"{target} {band} (solved on {solve_band})")
    tarball = outdir / f"{product}_tweakback.tar.gz"
    members = write_tweakback(
        [Path(c) for c in inputs["cal"]], tarball, f"{product}_tweakback", sol, ra0, dec0, record, outdir
    )
    table.meta["tweakback_members"] = members
    table.meta["seconds"] = round(time.time() - t0, 2)
    table.write(qa_table, format="ascii.ecsv", overwrite=True)
    log.info(
        "astrometry %s %s: %s, shift (%.1f, %.1f) mas, rotation %.5f deg, %d matches, RMS %.1f mas, %.1f s",
        target,
        band,
        sol.status,
        1000 * sol.shift_arcsec[0],
        1000 * sol.shift_arcsec[1],
        np.rad2deg(sol.theta_rad),
        sol.n_matches,
        1000 * sol.rms_arcsec,
        time.time() - t0,
    )
    return [out_mosaic, tarball, qa_table, figure]


STAGE = Stage(
    name="astrometry",
    unit="target_band",
    inputs=(
        Input("mosaic", "same", "lv3", "_i2d.fits"),
        Input("reference_mosaic", "reference_band", "lv3", "_i2d.fits", optional=True),
        Input("cal", "members", "lv2", "_cal.fits"),
        Input("catalog", "manifest_file", files="processing.astrometry.catalog:catalog_files", optional=True),
    ),
    outputs=("_i2d.fits", "_tweakback.tar.gz", "_astrometry.ecsv", "_astrometry.png"),
    run="processing.astrometry.absolute:run",
    parameters=ModelParameters(AbsoluteParameters, ABSOLUTE_DEFAULTS),
    products=(Product("img", "_i2d.fits"), Product("tweakback", "_tweakback.tar.gz")),
    refines=("lv3", "_i2d.fits"),
    memory_gb=2.5,
    # not declared retain: its mosaic and tweakback are intermediates under the default retention
    # (anchoring refines them). An anchoring change then redoes the band from lv2 on (the demo's
    # 1.1.0); keeping them would cost as many bytes again as the rate files (docs/engine.md)
    description="absolute astrometry against the reference catalogue (wide shift, then strict shift + rotation; MIRI "
    "solved on F1000W), applied to the mosaic and back-propagated to the exposures (tweakback)",
)
