"""Level matching and Lyot separation against the synthetic truth, side by side with jwst's
skymatch (part of `make bench`).

Per exposure of a finished run, the residual level is the median of (image - true sky) on its
own pixels (the truth is evaluated at the exposure's true pointing), separately over the
imager and, for MIRI full frames, the coronagraph (Lyot) region. After a correct matching
every part of every exposure of a target and band sits at one common level (what is left is
the absolute level, the anchoring stage's job): the error of the recovered offsets is the RMS
of the parts' residuals about their mean.

Three versions of each exposure: level 2 alone (what the offsets must undo), after this
system's Lyot separation and level matching, and after jwst's skymatch (the default
``skymethod='match'``, run on the same level-2 files; no Lyot separation: its coronagraph
region moves with its imager). In the final mosaic, the step between tiles is measured
where only one tile covers the sky on either side of the overlap: the median of (mosaic -
truth) in each such region (the truth aligned to the mosaic by :func:`level_match.align_shift`,
since the mosaics keep the guide-star errors until the astrometry stage), their difference
against the mosaic's pixel noise.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.benchmarks.destriping import _records


def _run_chain(cache: Path, records: list[dict]) -> list[tuple[dict, dict, dict[str, dict]]]:
    """The level-matching tasks of the run that made the workdir's products (a cache may also
    hold other runs' tasks, e.g. the Figure 3 variants): per product, (its lv3 record, the
    level_match record it read, exposure -> the lv2 record level matching read)."""
    by_key = {r["key"]: r for r in records}
    index = json.loads((cache.parent / "products" / "index.json").read_text())

    def upstream(rec: dict, stage: str) -> list[dict]:
        found, frontier = [], [rec]
        while frontier:
            nxt = []
            for r in frontier:
                for ref in r["inputs"].get("cal", []):
                    up = by_key[ref["task"]]
                    if up["stage"] == stage:
                        if up not in found:
                            found.append(up)
                    elif up not in nxt:
                        nxt.append(up)
            frontier = nxt
        return found

    out = []
    for p in index["products"]:
        if p["product"] != "img":
            continue
        lv3 = by_key[p["key"]]
        while lv3["stage"] != "lv3":  # a stage refining the mosaic (absolute astrometry): the lv3 it read
            lv3 = by_key[lv3["inputs"]["mosaic"][0]["task"]]
        lm = upstream(lv3, "level_match")
        if lm:
            lv2 = {r["task"].split("/", 1)[1]: r for r in upstream(lm[0], "lv2")}
            out.append((lv3, lm[0], lv2))
    return out


def _levels(data: np.ndarray, dq: np.ndarray, sky: np.ndarray, region: np.ndarray | None) -> tuple[float, float]:
    """(imager, Lyot) median of data - sky over usable pixels (Lyot NaN without a region)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = np.where((dq & 1) == 0, data - sky, np.nan)
        if region is None or not region.any():
            return float(np.nanmedian(res)), float("nan")
        return float(np.nanmedian(res[~region])), float(np.nanmedian(res[region]))


def _true_offsets(
    truth, name: str, lv2_record: dict, by_key: dict, valid: np.ndarray, region: np.ndarray | None
) -> tuple[float, float]:
    """(imager, Lyot) true additive offset of an exposure as it enters level matching
    (MJy/sr), from what was injected, free of the emission: NIRCam, the zodiacal sky plus the
    mean of its 1/f row stripes; MIRI, its background minus the mean of the off-field
    backgrounds level 2 subtracted (the exposures of its lv2 task's background input)."""
    from processing.simulate import detectors as D
    from processing.simulate.exposures import amplifier_columns

    inj = truth.injected(name)
    rec = truth.exposures[name]
    if rec["instrument"] == "nircam":
        img = np.array(inj["BKG"], dtype=np.float64)
        if "STRIPES" in inj:
            det = D.FILTERS[rec["band"]]["detector"]
            sub = D.subarray(det, truth.data["size"])
            ys = slice(sub["ystart"] - 1, sub["ystart"] - 1 + sub["shape"][0])
            xs = slice(sub["xstart"] - 1, sub["xstart"] - 1 + sub["shape"][1])
            stripes = np.zeros(img.shape)
            for a, cols in enumerate(amplifier_columns(img.shape[1], inj["STRIPES"].shape[1])):
                stripes[:, cols] = inj["STRIPES"][:, a : a + 1]
            img += stripes * D.FILTERS[rec["band"]]["photmjsr"] / D.flat(det, rec["band"])[ys, xs]
    else:
        offs = [by_key[r["task"]]["task"].split("/", 1)[1] for r in lv2_record["inputs"].get("background", [])]
        img = np.array(inj["BKG"], dtype=np.float64)
        if offs:
            img -= np.mean([truth.injected(o)["BKG"] for o in offs], axis=0)
    if region is None or not region.any():
        return float(np.median(img[valid])), float("nan")
    return float(np.median(img[valid & ~region])), float(np.median(img[valid & region]))


def _subtracted(path: Path) -> tuple[float, float]:
    """(imager, Lyot) level subtracted by level matching, from the cal file's header."""
    from astropy.io import fits

    h = fits.getheader(path, 0)
    return float(h.get("HLSPDLV", 0.0)), float(h.get("HLSPDLC", h.get("HLSPDLV", 0.0)))


def _skymatch_levels(cal_files: list[Path], workdir: Path) -> dict[str, float]:
    """jwst's SkyMatchStep at its defaults on ``cal_files``: exposure -> sky level it assigns
    (what resample subtracts, MJy/sr)."""
    from jwst.skymatch import SkyMatchStep

    from processing.jwst_stages import write_association

    workdir.mkdir(parents=True, exist_ok=True)
    asn = write_association([Path(f).resolve() for f in cal_files], "skymatch", workdir / "skymatch_asn.json")
    # absolute member paths in the association
    data = json.loads(asn.read_text())
    for m, f in zip(data["products"][0]["members"], cal_files):
        m["expname"] = str(Path(f).resolve())
    asn.write_text(json.dumps(data))
    out: dict[str, float] = {}
    lib = SkyMatchStep().run(str(asn))
    with lib:
        for k in range(len(lib)):
            m = lib.borrow(k)
            out[Path(m.meta.filename).name.replace("_cal.fits", "")] = float(m.meta.background.level or 0.0)
            lib.shelve(m, k, modify=False)
    return out


def measure(program: Path, cache: Path, workdir: Path | None = None, skymatch: bool = True, lyot: bool = True) -> dict:
    """Per target and band: residual levels per exposure part before, after level matching
    and after skymatch; the RMS errors; the mosaic's tile steps; with ``lyot``, the MIRI
    mosaic's coronagraph region against its imager (:func:`mosaic_lyot`)."""
    from stdatamodels.jwst import datamodels

    from processing.common import coronagraph as lyot
    from processing.simulate.truth import Truth

    truth = Truth(program)
    records = _records(cache)
    by_key = {r["key"]: r for r in records}
    out: dict = {}
    for lv3rec, rec, lv2 in sorted(_run_chain(cache, records), key=lambda c: c[1]["task"]):
        target, band = rec["task"].split("/")[1:]
        exposures = sorted(n.replace("_cal.fits", "") for n in rec["outputs"] if n.endswith("_cal.fits"))
        rows = []
        raw_files = []
        for name in exposures:
            raw = lv2[name]
            raw_file = raw["dir"] / f"{name}_cal.fits"
            raw_files.append(raw_file)
            sky = truth.exposure_sky(name)
            out_file = rec["dir"] / f"{name}_cal.fits"
            with datamodels.open(raw_file) as m0, datamodels.open(out_file) as m1:
                region = lyot.region_of(m0) if m0.meta.instrument.name == "MIRI" else None
                b_im, b_ly = _levels(np.asarray(m0.data), np.asarray(m0.dq), sky, region)
                a_im, a_ly = _levels(np.asarray(m1.data), np.asarray(m1.dq), sky, region)
                true = _true_offsets(truth, name, raw, by_key, (np.asarray(m0.dq) & 1) == 0, region)
            sub = _subtracted(out_file)
            rows.append(
                {
                    "exposure": name,
                    "visit": truth.exposures[name]["visit"],
                    "before": [b_im, b_ly],
                    "after": [a_im, a_ly],
                    "true_offset": list(true),
                    "subtracted": list(sub),
                    "offset_error": [true[0] - sub[0], true[1] - sub[1]],
                }
            )
        if skymatch:
            levels = _skymatch_levels(raw_files, (workdir or cache.parent) / "skymatch" / target / band)
            for r in rows:
                s = levels[r["exposure"]]
                r["skymatch"] = [r["before"][0] - s, r["before"][1] - s]
                r["skymatch_offset_error"] = [r["true_offset"][0] - s, r["true_offset"][1] - s]
        entry = {"rows": rows}
        from astropy.table import Table

        table = next((rec["dir"] / n for n in rec["outputs"] if n.endswith("_levels.ecsv")), None)
        if table is not None:  # the statistical floor: the solver's own 1-sigma errors
            errors = np.asarray(Table.read(table)["error_mjysr"], dtype=float)
            entry["floor"] = float(np.sqrt(np.mean(errors**2)))
        for version in ("before", "after", "skymatch", "true_offset", "offset_error", "skymatch_offset_error"):
            if version not in rows[0]:
                continue
            parts = np.array([v for r in rows for v in r[version] if np.isfinite(v)])
            imager = np.array([r[version][0] for r in rows])
            ly = np.array([r[version][1] for r in rows if np.isfinite(r[version][1])])
            entry[version] = {
                "rms_all": float(np.std(parts)),
                "rms_imager": float(np.std(imager)),
                "rms_lyot_about_imager": float(np.sqrt(np.mean((ly - imager.mean()) ** 2))) if ly.size else None,
                "mean_level": float(np.mean(parts)),
            }
        i2d = next(lv3rec["dir"] / n for n in lv3rec["outputs"] if n.endswith("_i2d.fits"))
        cals = {r["exposure"]: rec["dir"] / f"{r['exposure']}_cal.fits" for r in rows}
        mosaic = Mosaic.load(truth, target, band, i2d)
        entry["mosaic"] = mosaic_steps(truth, mosaic, cals)
        if lyot and truth.exposures[exposures[0]]["instrument"] == "miri":
            entry["mosaic_lyot"] = mosaic_lyot(mosaic, cals)
        out[f"{target}/{band}"] = entry
    return out


def _register_to_truth(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Shift aligning the true sky ``b`` to the mosaic ``a`` over a region: coarse on 4x4
    block means (a mosaic keeps guide-star errors of tens of pixels at 0.031"), then refined at
    full resolution; the better of that and a direct :func:`align_shift` by clipped RMS."""
    from astropy.nddata import block_reduce

    from processing.destripe_multi import _shifted
    from processing.level_match import align_shift, pair_difference, refine_shift

    ny, nx = (a.shape[0] // 4) * 4, (a.shape[1] // 4) * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coarse = align_shift(block_reduce(a[:ny, :nx], 4, np.nanmean), block_reduce(b[:ny, :nx], 4, np.nanmean))
    candidates = [align_shift(a, b)]
    if coarse is not None:
        candidates.append(tuple(refine_shift(a, b, (4.0 * coarse[0], 4.0 * coarse[1]), scales=(2.0, 1.0, 0.0))))
    candidates = [c for c in candidates if c is not None] or [(0.0, 0.0)]
    return min(candidates, key=lambda c: pair_difference(a, _shifted(b, *c))[2])


@dataclass
class Mosaic:
    """A final mosaic with the true sky on its pixels (evaluated once, shared by the measures)."""

    data: np.ndarray
    wcs: object
    sky: np.ndarray
    points: np.ndarray  # (x, y) of every pixel, for footprint tests

    @classmethod
    def load(cls, truth, target: str, band: str, i2d: Path) -> Mosaic:
        from stdatamodels.jwst import datamodels

        with datamodels.open(i2d) as m:
            data = np.asarray(m.data, dtype=np.float64)
            wcs = m.meta.wcs
        yy, xx = np.mgrid[0 : data.shape[0], 0 : data.shape[1]]
        ra, dec = wcs(xx, yy)
        return cls(data, wcs, truth.sky(target, band, ra, dec), np.column_stack([xx.ravel(), yy.ravel()]))

    def footprint(self, cal_wcs, corners: np.ndarray) -> np.ndarray:
        """Mosaic pixels inside a polygon given in a calibrated exposure's pixels (k, 2)."""
        from matplotlib.path import Path as Polygon

        r, d = cal_wcs(corners[:, 0], corners[:, 1])
        px, py = self.wcs.invert(r, d)
        return Polygon(np.column_stack([px, py])).contains_points(self.points).reshape(self.data.shape)

    def level(self, mask: np.ndarray) -> tuple[float, float, int] | None:
        """(sigma-clipped median of mosaic - aligned truth, its clipped std, pixels) over
        ``mask`` eroded by 5 pixels (drizzle weights taper at footprint edges); None below
        500 pixels."""
        from astropy.stats import sigma_clipped_stats
        from scipy import ndimage

        from processing.destripe_multi import _shifted

        mask = ndimage.binary_erosion(mask & np.isfinite(self.data), iterations=5)
        if mask.sum() < 500:
            return None
        a, b = np.where(mask, self.data, np.nan), np.where(mask, self.sky, np.nan)
        diff = (a - _shifted(b, *_register_to_truth(a, b)))[mask]
        _, med, std = sigma_clipped_stats(diff[np.isfinite(diff)], sigma=3, maxiters=10)
        return float(med), float(std), int(mask.sum())


def _frame(shape: tuple[int, int], edge: float) -> np.ndarray:
    """Corners of an image of ``shape``: pixel edges (``edge`` 0.5) or centres (0)."""
    h, w = shape
    return np.array([[-edge, -edge], [w - 1 + edge, -edge], [w - 1 + edge, h - 1 + edge], [-edge, h - 1 + edge]])


def mosaic_steps(truth, mosaic: Mosaic, cal_files: dict[str, Path]) -> dict:
    """Median of (mosaic - truth) where only one tile covers the sky, per tile, and the
    mosaic's pixel noise there; the step is the spread of the tiles' levels."""
    from stdatamodels.jwst import datamodels

    cover: dict[str, np.ndarray] = {}
    for name, path in cal_files.items():
        visit = truth.exposures[name]["visit"]
        with datamodels.open(path) as c:
            inside = mosaic.footprint(c.meta.wcs, _frame(c.data.shape, 0.0))
        cover[visit] = cover[visit] | inside if visit in cover else inside
    if len(cover) < 2:
        return {"tiles": len(cover)}
    levels, noise = {}, {}
    for visit, mask in cover.items():
        found = mosaic.level(mask & ~np.any([m for v, m in cover.items() if v != visit], axis=0))
        if found is not None:
            levels[visit], noise[visit] = found[0], found[1]
    vals = list(levels.values())
    sigma = float(np.median(list(noise.values()))) if noise else float("nan")
    step = float(max(vals) - min(vals)) if len(vals) > 1 else float("nan")
    return {
        "tiles": len(cover),
        "levels": levels,
        "pixel_noise": sigma,
        "step": step,
        "step_over_noise": step / sigma if sigma > 0 else float("nan"),
    }


def mosaic_lyot(mosaic: Mosaic, cal_files: dict[str, Path]) -> dict:
    """The coronagraph region's level in the mosaic against the imager's: median of (mosaic
    - aligned truth) where only coronagraph parts cover the sky, minus the same where only
    imager parts do (MJy/sr); 0 when the two are level-matched."""
    from stdatamodels.jwst import datamodels

    from processing.common import coronagraph as lyot

    coron_any = np.zeros(mosaic.data.shape, dtype=bool)
    imager_any = np.zeros(mosaic.data.shape, dtype=bool)
    for path in cal_files.values():
        with datamodels.open(path) as c:
            corner = np.array([int(c.meta.subarray.xstart or 1) - 1, int(c.meta.subarray.ystart or 1) - 1])
            frame = mosaic.footprint(c.meta.wcs, _frame(c.data.shape, 0.5))
            coron = mosaic.footprint(c.meta.wcs, lyot.aperture_polygon() - corner)
        coron_any |= coron
        imager_any |= frame & ~coron
    c_level = mosaic.level(coron_any & ~imager_any)
    i_level = mosaic.level(imager_any & ~coron_any)
    if c_level is None or i_level is None:
        return {"coron_minus_imager": float("nan")}
    return {"coron_minus_imager": c_level[0] - i_level[0], "coron_pixels": c_level[2], "pixel_noise": c_level[1]}


def mosaic_lyot_of_run(program: Path, cache: Path) -> dict:
    """``target/band -> mosaic_lyot`` for the MIRI mosaics of a run (e.g. one with the
    separation off)."""
    from processing.simulate.truth import Truth

    truth = Truth(program)
    out = {}
    for lv3rec, rec, _ in _run_chain(cache, _records(cache)):
        target, band = rec["task"].split("/")[1:]
        names = sorted(n.replace("_cal.fits", "") for n in rec["outputs"] if n.endswith("_cal.fits"))
        if truth.exposures[names[0]]["instrument"] != "miri":
            continue
        i2d = next(lv3rec["dir"] / n for n in lv3rec["outputs"] if n.endswith("_i2d.fits"))
        out[f"{target}/{band}"] = mosaic_lyot(
            Mosaic.load(truth, target, band, i2d), {n: rec["dir"] / f"{n}_cal.fits" for n in names}
        )
    return out


def render_lyot(result: dict, without: dict) -> list[str]:
    lines = [
        "",
        "The coronagraph (Lyot) region in the final mosaic (MJy/sr): median of (mosaic - aligned truth) where only "
        "coronagraph parts cover the sky minus the same where only imager parts do; without separation = the same "
        "run with `[parameters.instrument.miri.lyot] separate = false` (level matching then moves each exposure as "
        "one image, as skymatch does):",
        "",
        "| target/band | with separation | without | pixel noise |",
        "| --- | --- | --- | --- |",
    ]
    for key, e in result.items():
        w = e.get("mosaic_lyot", {})
        if w.get("coron_minus_imager") != w.get("coron_minus_imager") or "coron_minus_imager" not in w:
            continue
        wo = without.get(key, {}).get("coron_minus_imager", float("nan"))
        lines.append(f"| {key} | {w['coron_minus_imager']:+.4f} | {wo:+.4f} | {w['pixel_noise']:.3f} |")
    return lines


def render_offsets(result: dict) -> list[str]:
    """The recovered offsets against the injected truth (the primary measure)."""
    lines = [
        "",
        "Recovered offsets against the injected truth, per target and band (MJy/sr): RMS over the exposure parts "
        "(imager and, for MIRI, Lyot) of (true offset - offset subtracted), about their mean (a common constant is "
        "the absolute level, anchoring's job); in brackets the imager parts alone. Level 2 = the true offsets' own "
        "spread (nothing subtracted).",
        "",
        "| target/band | parts | level 2 | level matching | statistical floor (solver) | jwst skymatch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, e in result.items():
        n = sum(1 for r in e["rows"] for v in r["true_offset"] if v == v)

        def cell(name):
            v = e.get(name)
            return "n/a" if v is None else f"{v['rms_all']:.4f} ({v['rms_imager']:.4f})"

        floor = f"{e['floor']:.4f}" if "floor" in e else "n/a"
        lines.append(
            f"| {key} | {n} | {cell('true_offset')} | {cell('offset_error')} | {floor} | "
            f"{cell('skymatch_offset_error')} |"
        )
    return lines


def render(result: dict) -> list[str]:
    lines = [
        "",
        "Level matching against the truth, per target and band (MJy/sr). Residual level of an exposure part = "
        "median of (image - true sky) over it; the error of the offsets = RMS of the parts' residuals about their mean "
        "(imager and Lyot parts together); Lyot = RMS of the Lyot parts about the imager mean; level = mean residual "
        "(the absolute level, anchoring's job: negative = emission removed):",
        "",
        "| target/band | level 2: RMS (Lyot) | level matching: RMS (Lyot), level | jwst skymatch: RMS (Lyot), level "
        "| mosaic step / pixel noise |",
        "| --- | --- | --- | --- | --- |",
    ]

    def cell(e):
        if e is None:
            return "n/a"
        ly = f" ({e['rms_lyot_about_imager']:.4f})" if e.get("rms_lyot_about_imager") is not None else ""
        return f"{e['rms_all']:.4f}{ly}, {e['mean_level']:+.3f}"

    for key, e in result.items():
        mos = e.get("mosaic", {})
        step = (
            f"{mos['step']:.4f} / {mos['pixel_noise']:.3f} = {mos['step_over_noise']:.3f}"
            if mos.get("step") == mos.get("step") and "step" in mos
            else "one tile"
        )
        before = e["before"]
        ly = f" ({before['rms_lyot_about_imager']:.4f})" if before.get("rms_lyot_about_imager") is not None else ""
        lines.append(
            f"| {key} | {before['rms_all']:.4f}{ly} | {cell(e.get('after'))} | {cell(e.get('skymatch'))} | {step} |"
        )
    return lines


def _scaling_worker(files: list[str], outdir: str) -> tuple[float, float]:
    import resource
    import time

    from processing import level_match

    t0 = time.time()
    level_match.run({"cal": files}, Path(outdir), {}, {"product": "scaling"})
    return time.time() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_scaling(cache: Path, workdir: Path, copies: tuple[int, ...] = (1, 2, 4)) -> list[dict]:
    """Time and peak memory of level matching against the number of exposures: synth1's
    F770W exposures (4, each as imager and coronagraph parts) repeated ``copies`` times as
    further visits (their visit number changed; same pointings, so every image overlaps
    every other of its kind: the most pairs a set of that size can have). Each size runs in
    a fresh process (its own peak memory)."""
    import shutil
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from astropy.io import fits

    records = _records(cache)
    lyot_tasks = [
        r
        for r in records
        if r["stage"] == "lyot" and r["context"].get("target") == "synth1" and r["context"].get("band") == "F770W"
    ]
    parts = sorted({r["dir"] / n for r in lyot_tasks for n in r["outputs"]})
    out = []
    for k in copies:
        folder = workdir / f"scaling-{k}"
        shutil.rmtree(folder, ignore_errors=True)
        inputs = folder / "inputs"
        inputs.mkdir(parents=True)
        files = []
        for c in range(k):
            for p in parts:
                dest = inputs / p.name.replace("jw09001002", f"jw0900100{2 + 2 * c}" if c else "jw09001002")
                shutil.copyfile(p, dest)
                if c:
                    with fits.open(dest, mode="update") as h:
                        h[0].header["VISIT"] = f"{int(h[0].header['VISIT']) + 10 * c:03d}"
                files.append(str(dest))
        run_dir = folder / "run"
        run_dir.mkdir()
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            elapsed, peak = pool.submit(_scaling_worker, files, str(run_dir)).result()
        n_exp = len({Path(f).name.split("_cal")[0].replace("_coron", "") for f in files})
        out.append(
            {"exposures": n_exp, "images": len(files), "elapsed_s": round(elapsed, 1), "peak_rss_mb": round(peak, 0)}
        )
        shutil.rmtree(folder, ignore_errors=True)
    return out


def render_scaling(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "Level matching cost against the number of exposures (MIRI full frames, synth1 F770W repeated as further "
        "visits at the same pointings, so every image overlaps every other of its kind; one process each):",
        "",
        "| exposures | images (imager + Lyot parts) | time (s) | peak memory (MB) |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r['exposures']} | {r['images']} | {r['elapsed_s']} | {r['peak_rss_mb']:.0f} |" for r in rows]
    return lines
