"""Relative and absolute astrometry against the synthetic truth, side by side with jwst's
tweakreg (part of `make bench`).

The truth of a pixel is where the simulator put it on the sky: the exposure's true attitude
(nominal pointing + the visit's guide-star error) through the SIAF geometry the simulator
renders with (processing/simulate/exposures.py ``pixel_sky``). The error of a WCS is then
exact, free of centroiding noise: ``WCS(p) - truth(p)`` on a 5x5 grid of each exposure's
pixels, in mas (east, north); its mean is the exposure's offset, its spread the rotation and
distortion error.

Measured, per target and band:

- the level-2 files as jwst leaves them (the guide-star errors);
- after relative astrometry (one shift per visit, solved on the reference band);
- the tweakback files (relative + absolute, back-propagated from the mosaic solution);
- jwst's TweakRegStep at its defaults with the same reference catalogue file as
  ``abs_refcat`` (what a user of the default pipeline gets), on the same level-2 files;
- the mosaic: point sources detected in the released mosaic against their true positions
  (centroid noise included), per tile (regions only one visit covers) and overall.
"""

from __future__ import annotations

import json
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np

from tests.benchmarks.destriping import _records


def true_pixel_sky(truth, name: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True (ra, dec) of 0-based pixels ``(x, y)`` of exposure ``name`` (deg)."""
    from pysiaf.utils import rotations

    from processing.simulate import detectors as D
    from processing.simulate.exposures import attitude_for
    from processing.simulate.program import offset_radec

    exp = truth.planned(name)
    det = D.FILTERS[exp.band]["detector"]
    sub = D.subarray(det, truth.data["size"])
    de, dn = truth.data["visits"][exp.visit_id]["pointing_error_arcsec"]
    att = attitude_for(sub, *offset_radec(exp.ra_ref, exp.dec_ref, de, dn), exp.pa_v3)
    v2, v3 = D.geometry(det).det_to_v2v3(np.asarray(x) + sub["xstart"] - 1, np.asarray(y) + sub["ystart"] - 1)
    ra, dec = rotations.pointing(att, np.ravel(v2), np.ravel(v3))
    return np.asarray(ra), np.asarray(dec)


def wcs_error(truth, name: str, wcs, shape: tuple[int, int]) -> dict:
    """Error of an exposure's WCS against the truth on a 5x5 pixel grid (mas, east/north)."""
    from processing.astrometry.match import to_tangent

    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(2, nx - 3, 5), np.linspace(2, ny - 3, 5))
    gx, gy = gx.ravel(), gy.ravel()
    tra, tdec = true_pixel_sky(truth, name, gx, gy)
    ra, dec = wcs(gx, gy)
    x, y = to_tangent(ra, dec, float(np.mean(tra)), float(np.mean(tdec)))
    tx, ty = to_tangent(tra, tdec, float(np.mean(tra)), float(np.mean(tdec)))
    d = 1000 * np.column_stack([x - tx, y - ty])
    return {
        "mean_mas": [float(v) for v in d.mean(axis=0)],
        "spread_mas": float(np.sqrt(np.mean(np.sum((d - d.mean(axis=0)) ** 2, axis=1)))),
    }


def _model_error(truth, path_or_model, name: str) -> dict:
    from stdatamodels.jwst import datamodels

    if isinstance(path_or_model, (str, Path)):
        with datamodels.open(path_or_model) as m:
            return wcs_error(truth, name, m.meta.wcs, m.data.shape)
    return wcs_error(truth, name, path_or_model.meta.wcs, path_or_model.data.shape)


def _summary(errors: dict[str, dict], visits: dict[str, str]) -> dict:
    """Per-visit mean offset and the RMS over exposures of |offset| (mas)."""
    if not errors:
        return {}
    off = np.array([e["mean_mas"] for e in errors.values()])
    per_visit = {}
    for v in sorted(set(visits.values())):
        sel = np.array([visits[n] == v for n in errors])
        per_visit[v] = [round(float(a), 2) for a in off[sel].mean(axis=0)]
    return {
        "rms_mas": round(float(np.sqrt(np.mean(np.sum(off**2, axis=1)))), 2),
        "max_mas": round(float(np.hypot(off[:, 0], off[:, 1]).max()), 2),
        "per_visit_mas": per_visit,
        "n": len(errors),
        "spread_mas": round(float(np.mean([e["spread_mas"] for e in errors.values()])), 2),
    }


def _tweakreg_default(cals: list[Path], refcat: Path, workdir: Path) -> tuple[dict, float]:
    """jwst's TweakRegStep at its defaults with ``abs_refcat`` = the catalogue file: the
    corrected models (exposure -> model) and the seconds it took."""
    from jwst.datamodels import ModelLibrary
    from jwst.tweakreg import TweakRegStep
    from stdatamodels.jwst import datamodels

    workdir.mkdir(parents=True, exist_ok=True)
    models = [datamodels.open(c) for c in cals]
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step = TweakRegStep(abs_refcat=str(refcat), output_dir=str(workdir))
        result = step.run(ModelLibrary(models))
    out = {}
    with result:
        for i in range(len(result)):
            m = result.borrow(i)
            out[Path(m.meta.filename).name.replace("_cal.fits", "")] = m
            result.shelve(m, i, modify=False)
    return out, time.time() - t0


def _tweakback_members(tarball: Path) -> dict[str, bytes]:
    out = {}
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            out[Path(member.name).name.replace("_cal.fits", "")] = tar.extractfile(member).read()
    return out


def mosaic_stars(
    truth, target: str, band: str, i2d: Path, cal_footprints: dict[str, tuple], visits: dict[str, str]
) -> dict:
    """Point sources of a mosaic against their true positions: per tile (only one visit
    covers the star) and overall, median offset (mas) and count."""
    from astropy.table import Table

    from processing.astrometry.absolute import mosaic_sources
    from processing.astrometry.match import match_nearest, to_tangent

    cat = Table.read(truth.root / "external" / f"{target}_refcat.ecsv")
    cat = cat[cat["IN_SKY"]]
    found, ra0, dec0, radius = mosaic_sources(i2d, band, {"nsigma": 8.0, "max_sources": 3000})
    if not len(found["ra"]):
        return {}
    sx, sy = to_tangent(found["ra"], found["dec"], ra0, dec0)
    tx, ty = to_tangent(np.asarray(cat["RA_TRUE"]), np.asarray(cat["DEC_TRUE"]), ra0, dec0)
    i, j = match_nearest(np.column_stack([sx, sy]), np.column_stack([tx, ty]), 0.15)
    d = 1000 * np.column_stack([sx[i] - tx[j], sy[i] - ty[j]])
    # which visits cover each matched star
    owner = []
    for ra, dec in zip(found["ra"][i], found["dec"][i]):
        covering = {visits[n] for n, (inv, shape) in cal_footprints.items() if _inside(inv, shape, ra, dec)}
        owner.append(covering.pop() if len(covering) == 1 else None)
    tiles = {}
    for v in sorted({o for o in owner if o}):
        sel = np.array([o == v for o in owner])
        if sel.sum() >= 3:
            tiles[v] = {"median_mas": [round(float(a), 2) for a in np.median(d[sel], axis=0)], "n": int(sel.sum())}
    med = np.median(d, axis=0) if len(d) else np.zeros(2)
    return {
        "median_mas": [round(float(a), 2) for a in med],
        "n": int(len(d)),
        "tiles": tiles,
        "tile_rms_mas": round(float(np.sqrt(np.mean([np.sum(np.square(t["median_mas"])) for t in tiles.values()]))), 2)
        if tiles
        else None,
    }


def _inside(inverse, shape, ra, dec) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = inverse(ra, dec)
    ny, nx = shape
    return bool(np.isfinite(x) and np.isfinite(y) and 0 <= x < nx and 0 <= y < ny)


def measure(program: Path, cache: Path, workdir: Path, tweakreg: bool = True) -> dict:
    """Every astrometry product of the run that made ``cache``'s work folder, against the truth."""
    from astropy.io import fits
    from stdatamodels.jwst import datamodels

    from processing.simulate.truth import Truth

    truth = Truth(program)
    records = _records(cache)
    by_key = {r["key"]: r for r in records}
    index = json.loads((cache.parent / "products" / "index.json").read_text())
    lv2_by_exposure = {}
    for r in records:
        if r["stage"] == "lv2":
            lv2_by_exposure.setdefault(r["task"].split("/", 1)[1], r)
    out = {}
    for p in index["products"]:
        if p["product"] != "img":
            continue
        rec = by_key[p["key"]]
        # a later stage refining the mosaic (anchoring): the astrometry task it read
        while rec["stage"] != "astrometry" and rec["inputs"].get("mosaic"):
            rec = by_key[rec["inputs"]["mosaic"][0]["task"]]
        if rec["stage"] != "astrometry":
            continue
        target, band = p["target"], p["band"]
        table_path = next(rec["dir"].glob("*_astrometry.ecsv"))
        from astropy.table import Table

        meta = Table.read(table_path).meta
        members = _tweakback_members(next(rec["dir"].glob("*_tweakback.tar.gz")))
        names = sorted(members)
        visits = {n: truth.exposures[n]["visit"] for n in names}
        lv2_files = {n: next(lv2_by_exposure[n]["dir"].glob("*_cal.fits")) for n in names}
        # relative astrometry's outputs for these exposures (the task this run read)
        rel = {}
        for r in records:
            if (
                r["stage"] == "relative_astrometry"
                and r["task"] == f"relative_astrometry/{target}/{truth.exposures[names[0]]['instrument']}"
            ):
                for n in names:
                    f = r["dir"] / f"{n}_cal.fits"
                    if f.exists():
                        rel[n] = f
        before = {n: _model_error(truth, f, n) for n, f in lv2_files.items()}
        relative = {n: _model_error(truth, f, n) for n, f in rel.items()}
        tweakback = {}
        footprints = {}
        for n, data in members.items():
            with datamodels.ImageModel(fits.HDUList.fromstring(data)) as m:
                tweakback[n] = wcs_error(truth, n, m.meta.wcs, m.data.shape)
                footprints[n] = (m.meta.wcs.backward_transform, m.data.shape)
        row = {
            "target": target,
            "band": band,
            "solved_on": meta["solved_on"],
            "status": meta["solution"]["status"],
            "n_matches": meta["solution"]["n_matches"],
            "rms_fit_mas": round(1000 * meta["solution"]["rms_arcsec"], 2),
            "seconds": meta["seconds"],
            "level2": _summary(before, visits),
            "relative": _summary(relative, visits),
            "tweakback": _summary(tweakback, visits),
        }
        row["mosaic"] = mosaic_stars(
            truth, target, band, cache / "objects" / p["key"][:2] / p["key"] / Path(p["file"]).name, footprints, visits
        )
        if tweakreg:
            refcat = truth.root / "external" / f"{target}_refcat.ecsv"
            models, secs = _tweakreg_default(list(lv2_files.values()), refcat, workdir / f"tweakreg-{target}-{band}")
            row["tweakreg_default"] = _summary({n: _model_error(truth, m, n) for n, m in models.items()}, visits)
            row["tweakreg_default"]["seconds"] = round(secs, 1)
            for m in models.values():
                m.close()
        out[f"{target}/{band}"] = row
    return out


def render(result: dict) -> list[str]:
    """Markdown table: per target and band, RMS over exposures of the WCS offset against the
    truth (mas) at each step, and the mosaic's star offsets."""
    lines = [
        "| target | band | solved on | matches | level 2 (guide stars) | relative | tweakback (final) | jwst "
        "tweakreg + abs_refcat | mosaic stars: median, per-tile RMS (n) | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in sorted(result.items()):

        def c(s):
            return f"{s['rms_mas']:.1f}" if s else "-"

        mos = r.get("mosaic") or {}
        tile_rms = "-" if mos.get("tile_rms_mas") is None else mos["tile_rms_mas"]
        mos_cell = f"({mos['median_mas'][0]:.1f}, {mos['median_mas'][1]:.1f}), {tile_rms} ({mos['n']})" if mos else "-"
        lines.append(
            f"| {r['target']} | {r['band']} | {r['solved_on']} | {r['n_matches']} | {c(r['level2'])} | "
            f"{c(r['relative'])} | "
            f"{c(r['tweakback'])} | {c(r.get('tweakreg_default'))} | {mos_cell} | {r['seconds']:.0f} s |"
        )
    return lines


if __name__ == "__main__":  # python -m tests.benchmarks.astrometry PROGRAM CACHE [OUT]
    import sys

    program, cache = Path(sys.argv[1]), Path(sys.argv[2])
    outdir = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("bench-output/astrometry")
    res = measure(program, cache, outdir)
    print(json.dumps(res, indent=1))
    print("\n".join(render(res)))
