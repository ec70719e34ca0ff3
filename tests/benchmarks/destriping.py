"""NIRCam destriping against the synthetic truth (part of `make bench`).

For every NIRCam exposure of a finished run, three versions of the calibrated image are
compared with the truth (the true sky and background on its pixels, MJy/sr): image2 on the
un-destriped rate file (what the jwst pipeline alone gives), after the single-tile stage, and
after both stages. The measure is the row structure of (image - truth): the RMS over rows of
the median of each amplifier row. The per-row noise floor is the same measure with the
injected stripes also taken out (what no row estimator can go below on its own noise).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _records(cache: Path) -> list[dict]:
    out = []
    for p in sorted((cache / "objects").glob("*/*/task.json"), key=lambda q: q.stat().st_mtime):
        r = json.loads(p.read_text())
        r["dir"] = p.parent
        out.append(r)
    return out


def _truth_of(truth, name: str) -> tuple:
    """(planned exposure, true sky + background on its pixels (MJy/sr), injected stripes
    (rows x amplifiers, DN/s), amplifier column slices) of one exposure."""
    from processing.simulate.exposures import amplifier_columns

    exp = truth.planned(name)
    inj = truth.injected(name)
    sky = truth.exposure_sky(name) + inj["BKG"]
    return exp, sky, inj["STRIPES"], amplifier_columns(sky.shape[1], inj["STRIPES"].shape[1])


def _row_structure(img: np.ndarray, valid: np.ndarray, cols: list[slice]) -> float:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = np.array([np.nanmedian(np.where(valid[:, c], img[:, c], np.nan), axis=1) for c in cols]).T
    good = np.isfinite(rows).all(axis=1)
    r = rows[good]
    return float(np.std(r - r.mean()))


def measure(program: Path, cache: Path) -> dict:
    from stdatamodels.jwst import datamodels

    from processing.simulate import detectors as D
    from processing.simulate.truth import Truth

    truth = Truth(program)
    stage_of = {}
    raw_cal, single_cal, final_cal, elapsed = {}, {}, {}, defaultdict(list)
    model1, model2 = {}, {}
    recs = _records(cache)
    for r in recs:
        stage_of[r["key"]] = r["stage"]
    for r in recs:  # oldest first: the newest record of an output wins
        if r["stage"] in ("destripe", "destripe_multi"):
            elapsed[r["stage"]].append((r["elapsed_s"], r["peak_rss_mb"]))
        if r["stage"] == "lv2" and "_nrc" in r["task"]:
            src = stage_of.get(r["inputs"]["rate"][0].get("task"))
            for n in r["outputs"]:
                if n.endswith("_cal.fits"):
                    (raw_cal if src == "lv1" else single_cal)[n] = r["dir"] / n
        if r["stage"] == "destripe_multi":
            for n in r["outputs"]:
                if n.endswith("_cal.fits"):
                    final_cal[n] = r["dir"] / n
                if n.endswith("_destripe2.fits"):
                    model2[n.replace("_destripe2.fits", "_cal.fits")] = r["dir"] / n
        if r["stage"] == "destripe":
            for n in r["outputs"]:
                if n.endswith("_destripe1.fits"):
                    model1[n.replace("_destripe1.fits", "_cal.fits")] = r["dir"] / n
    rows = []
    for n in sorted(final_cal):
        if n not in single_cal:
            continue
        name = n[: -len("_cal.fits")]
        exp, sky, stripes, cols = _truth_of(truth, name)
        det = D.FILTERS[exp.band]["detector"]
        sub = D.subarray(det, truth.data["size"])
        ys = slice(sub["ystart"] - 1, sub["ystart"] - 1 + sub["shape"][0])
        xs = slice(sub["xstart"] - 1, sub["xstart"] - 1 + sub["shape"][1])
        flat = D.flat(det, exp.band)[ys, xs]
        stripe_img = np.concatenate(
            [np.repeat(stripes[:, a : a + 1], c.stop - c.start, 1) for a, c in enumerate(cols)], 1
        )
        stripe_img = stripe_img / flat * D.FILTERS[exp.band]["photmjsr"]
        from astropy.io import fits

        ph = D.FILTERS[exp.band]["photmjsr"]
        m1 = fits.getdata(model1[n], "STRIPES") * ph / flat if n in model1 else 0.0
        with datamodels.open(single_cal[n]) as s, datamodels.open(final_cal[n]) as f:
            if n in raw_cal:
                with datamodels.open(raw_cal[n]) as a:
                    raw = np.array(a.data, dtype=np.float64)
            else:  # image2 is linear for NIRCam (flat, photometric scale): the single-tile model added back
                raw = np.asarray(s.data, dtype=np.float64) + m1
            valid = np.isfinite(raw) & ((s.dq & 1) == 0)
            before = _row_structure(raw - sky, valid, cols)
            floor = _row_structure(raw - sky - stripe_img, valid, cols)
            single = _row_structure(s.data - sky, valid, cols)
            both = _row_structure(f.data - sky, valid, cols)
            level = float(
                fits.getheader(final_cal[n], 0).get("HLSPDLV", 0.0)
            )  # level matching's offset, not destriping's
            flux = float(np.nansum(np.where(valid, f.data + level - raw, 0)) / np.nansum(np.where(valid, sky, 0)))
        # the stripe models themselves against the injected stripes (per row and amplifier)
        total = m1
        with fits.open(model2[n]) as hd:
            total = total + sum(h.data for h in hd[1:])
        injected = stripes * np.nanmean(ph / flat)
        fitted = np.array([np.nanmean(np.where(valid[:, c], total[:, c], np.nan), axis=1) for c in cols]).T
        good = np.isfinite(fitted).all(axis=1)
        resid = (fitted - injected)[good]
        removed = 1.0 - float(np.std(resid - resid.mean(axis=0))) / float(
            np.std(injected[good] - injected[good].mean(axis=0))
        )
        rows.append(
            {
                "removed_fraction": round(removed, 3),
                "exposure": name,
                "target": exp.target,
                "band": exp.band,
                "injected_mjysr": round(float(np.std(stripe_img)), 4),
                "before": round(before, 4),
                "single": round(single, 4),
                "both": round(both, 4),
                "floor": round(floor, 4),
                "both_over_floor": round(both / floor, 2),
                "flux_change": round(flux, 5),
            }
        )
    per_stage = {
        k: {"tasks": len(v), "max_s": max(e for e, _ in v), "peak_rss_mb": max(m for _, m in v)}
        for k, v in elapsed.items()
    }
    return {"exposures": rows, "stages": per_stage}


def render(result: dict) -> list[str]:
    lines = [
        "",
        "NIRCam destriping against the truth, per exposure (MJy/sr; row structure = RMS over rows of each",
        "amplifier row's median of image minus truth; floor = the same without the injected stripes):",
        "",
        "| exposure | band | injected stripes | image2 alone | + single tile | + multi tile | floor | final / floor "
        "| stripes removed | flux change |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["exposures"]:
        lines.append(
            f"| {r['exposure']} | {r['band']} | {r['injected_mjysr']} | {r['before']} | {r['single']} | {r['both']} | "
            f"{r['floor']} | {r['both_over_floor']} | {100 * r['removed_fraction']:.0f}% | "
            f"{100 * r['flux_change']:+.3f}% |"
        )
    for k, v in result["stages"].items():
        lines.append(f"\n- {k}: {v['tasks']} task(s), slowest {v['max_s']} s, largest peak {v['peak_rss_mb']:.0f} MB")
    return lines


#: jwst's own 1/f cleaner on the same rate files: its defaults (median fit, median
#: background), its model background, and per-amplifier fitting (full frames).
FLICKER_VARIANTS = {
    "clean_flicker_noise (defaults)": {},
    "clean_flicker_noise (model background)": {"background_method": "model"},
    "clean_flicker_noise (per amplifier)": {"fit_by_channel": True},
}


def measure_clean_flicker_noise(
    program: Path,
    cache: Path,
    workdir: Path,
    manifest_crds: str = "jwst_9001.pmap",
    targets: tuple[str, ...] | None = None,
) -> dict:
    """jwst's CleanFlickerNoiseStep on each un-destriped NIRCam rate file, then image2, with
    the row-structure measure of :func:`measure` (and time and peak memory per exposure)."""
    import resource
    import time

    from stdatamodels.jwst import datamodels

    from processing import jwst_stages
    from processing.jwst_stages import IMAGE2, apply_crds_environment, crds_environment
    from processing.simulate.truth import Truth

    apply_crds_environment(crds_environment(program / "crds", manifest_crds))
    truth = Truth(program)
    recs = _records(cache)
    stage_of = {r["key"]: r["stage"] for r in recs}
    raw_rate, raw_cal = {}, {}
    for r in recs:
        if r["stage"] == "lv1" and "_nrc" in r["task"]:
            for n in r["outputs"]:
                raw_rate[n[: -len("_rate.fits")]] = r["dir"] / n
        if r["stage"] == "lv2" and "_nrc" in r["task"] and stage_of.get(r["inputs"]["rate"][0].get("task")) == "lv1":
            for n in r["outputs"]:
                raw_cal[n[: -len("_cal.fits")]] = r["dir"] / n
    params = IMAGE2.parameters.default_values("nircam")
    out: dict = {}
    for label, options in FLICKER_VARIANTS.items():
        rows = []
        for name, rate in sorted(raw_rate.items()):
            if targets and truth.planned(name).target not in targets:
                continue
            if name not in raw_cal:  # image2 on the un-destriped rate file, the reference
                raw_cal[name] = jwst_stages.run_image2(rate, workdir / "image2-alone" / name, params)
            from jwst.clean_flicker_noise import CleanFlickerNoiseStep

            folder = workdir / label.split("(")[1].rstrip(")").replace(" ", "-") / name
            folder.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            step = CleanFlickerNoiseStep(skip=False, **options)
            with datamodels.open(rate) as m:
                cleaned = step.run(m)
                path = folder / f"{name}_rate.fits"
                cleaned.save(path)
                cleaned.close()
            elapsed = time.time() - t0
            cal = jwst_stages.run_image2(path, folder, params)
            exp, sky, _, cols = _truth_of(truth, name)
            with datamodels.open(raw_cal[name]) as a, datamodels.open(cal) as c:
                valid = np.isfinite(a.data) & ((a.dq & 1) == 0) & np.isfinite(c.data)
                after = _row_structure(c.data - sky, valid, cols)
                before = _row_structure(a.data - sky, valid, cols)
                flux = float(np.nansum(np.where(valid, c.data - a.data, 0)) / np.nansum(np.where(valid, sky, 0)))
            rows.append(
                {
                    "exposure": name,
                    "band": exp.band,
                    "shape": list(sky.shape),
                    "before": round(before, 4),
                    "after": round(after, 4),
                    "flux_change": round(flux, 5),
                    "elapsed_s": round(elapsed, 1),
                }
            )
        out[label] = {
            "exposures": rows,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
        }
    return out


def render_flicker(result: dict) -> list[str]:
    """jwst's clean_flicker_noise, per variant and band: mean row structure before/after
    (MJy/sr, as in :func:`render`), the worst exposure, flux change range, time per exposure."""
    lines = [
        "",
        "jwst's clean_flicker_noise on the same rate files, then image2 (same measure):",
        "",
        "| variant | band | exposures | image2 alone | after | worst after / before | flux change | time per "
        "exposure |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, v in result.items():
        if not isinstance(v, dict) or "exposures" not in v:
            continue
        for band in sorted({e["band"] for e in v["exposures"]}):
            es = [e for e in v["exposures"] if e["band"] == band]
            lines.append(
                f"| {label} | {band} | {len(es)} | {np.mean([e['before'] for e in es]):.4f} | "
                f"{np.mean([e['after'] for e in es]):.4f} | {max(e['after'] / e['before'] for e in es):.1f} | "
                f"{100 * min(e['flux_change'] for e in es):+.2f}% to {100 * max(e['flux_change'] for e in es):+.2f}% | "
                f"{max(e['elapsed_s'] for e in es)} s |"
            )
    return lines
