"""Background anchoring against the synthetic truth (issue 13; the paper's section 3.9).

Per target and band of a run: the level of the mosaic against the true sky (median of mosaic -
true sky over the mosaic, sigma-clipped) before anchoring (what level matching's
lowest-tile constant left, as the paper's level 3 with skymatch off) and after; the reported
uncertainty against that error; the wide-field image's zero as the stage measured it against
the truth; the empty-sky level where the true sky is below 0.02 MJy/sr (where the mosaic has
any); the stage's time.

Run: python -m tests.benchmarks.anchoring PROGRAM WORKDIR (a workdir whose run included the
anchoring stage, e.g. demo-output/program demo-output/work).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def sample_mosaic(path: Path, samples: int = 40000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """About ``samples`` pixels of a mosaic on a regular grid, where it has data (finite SCI,
    and WHT > 0 where there is a WHT): their values and sky coordinates (deg)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(path, memmap=True) as hdul:
        sci = hdul["SCI"]
        ny, nx = sci.shape
        step = max(1, int(np.sqrt(ny * nx / samples)))
        yy, xx = np.mgrid[0:ny:step, 0:nx:step]
        data = np.asarray(sci.data[0:ny:step, 0:nx:step], float)
        wht = np.asarray(hdul["WHT"].data[0:ny:step, 0:nx:step]) if "WHT" in hdul else np.ones_like(data)
        w = WCS(sci.header).celestial
    ok = np.isfinite(data) & (wht > 0)
    ra, dec = w.pixel_to_world_values(xx[ok], yy[ok])
    return data[ok], ra, dec


def _level(path: Path, truth, target: str, band: str, samples: int = 40000) -> tuple[float, float | None, int]:
    """(median of mosaic - true sky, the same where the true sky < 0.02 MJy/sr or None, pixels there)."""
    from astropy.stats import sigma_clipped_stats

    data, ra, dec = sample_mosaic(path, samples)
    sky = truth.sky(target, band, ra, dec)
    diff = data - sky
    _, med, _ = sigma_clipped_stats(diff, sigma=3, maxiters=10)
    empty = sky < 0.02
    level_empty = float(np.median(diff[empty])) if empty.sum() >= 200 else None
    return float(med), level_empty, int(empty.sum())


def measure(program: Path, workdir: Path) -> list[dict]:
    """One row per anchored mosaic of the run that made ``workdir``'s products."""
    from astropy.table import Table

    from processing.simulate.truth import Truth

    truth = Truth(program)
    ext_truth = truth.data["external"]
    index = json.loads((Path(workdir) / "products" / "index.json").read_text())
    out = []
    for p in index["products"]:
        if p["product"] != "img" or not p["task"].startswith("anchoring/"):
            continue
        entry = Path(workdir) / "cache" / "objects" / p["key"][:2] / p["key"]
        product = p["file"][: -len("_i2d.fits")]
        table = Table.read(entry / f"{product}_anchoring.ecsv")
        meta = table.meta
        after, empty, n_empty = _level(entry / p["file"], truth, p["target"], p["band"])
        offset = float(meta["offset_mjysr"])
        used = [r for r in table if r["used"] and str(r["role"]).startswith("external")]
        sky_err = None
        if used and np.isfinite(used[0]["sky_level"]):
            survey = str(used[0]["against"])
            sky_err = abs(float(used[0]["sky_level"]) - ext_truth[p["target"]][survey]["background_mjysr"])
        unc = float(meta["uncertainty_mjysr"])
        out.append(
            {
                "target": p["target"],
                "band": p["band"],
                "status": meta["status"],
                "anchored_to": meta["anchored_to"],
                "offset": round(offset, 4),
                "uncertainty": round(unc, 4) if np.isfinite(unc) else None,
                "level_before": round(after + offset, 4),
                "level_after": round(after, 4),
                "within_2_sigma": bool(np.isfinite(unc) and abs(after) <= 2 * unc),
                "slope": round(float(meta["slope"]), 4),
                "reference_sky_error": round(sky_err, 4) if sky_err is not None else None,
                "empty_sky_level": round(empty, 4) if empty is not None else None,
                "empty_sky_pixels": n_empty,
                "seconds": float(meta["seconds"]),
            }
        )
    return sorted(out, key=lambda r: (r["target"], r["band"]))


def render(rows: list[dict]) -> list[str]:
    lines = [
        "Background anchoring against the truth, per target and band (MJy/sr): level = sigma-clipped median of "
        "(mosaic - true sky); before = after level matching's lowest-tile constant (the paper's level 3), after = "
        "anchored; sigma = the reported uncertainty; sky error = the wide-field image's zero as measured - true.",
        "",
        "| target | band | anchored to | level before | level after | sigma | within 2 sigma | sky error | time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['band']} | {r['anchored_to'] if r['status'] == 'anchored' else r['status']} | "
            f"{r['level_before']:+.3f} | "
            f"{r['level_after']:+.4f} | {r['uncertainty'] if r['uncertainty'] is not None else '-'} | "
            f"{'yes' if r['within_2_sigma'] else 'no'} | "
            f"{r['reference_sky_error'] if r['reference_sky_error'] is not None else '-'} | "
            f"{r['seconds']:.1f} |"
        )
    if rows:
        done = [r for r in rows if r["status"] == "anchored"]
        err = np.array([abs(r["level_after"]) for r in done]) if done else np.zeros(0)
        lines += [
            "",
            f"{len(done)} of {len(rows)} mosaics anchored"
            + (
                f": |level after| median {np.median(err):.4f}, max {err.max():.4f} MJy/sr; within 0.01: "
                f"{int((err <= 0.01).sum())}/{len(done)}; within 2 reported sigma: "
                f"{sum(r['within_2_sigma'] for r in done)}/{len(done)}."
                if done
                else "."
            ),
        ]
    return lines


if __name__ == "__main__":
    rows = measure(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps(rows, indent=1))
    print("\n".join(render(rows)))
