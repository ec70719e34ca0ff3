"""Process the synthetic program with the official pipeline at its defaults.

This is what a user gets without this system (and what MAST serves): calwebb_detector1,
calwebb_image2 and calwebb_image3 at jwst's defaults, science exposures only (MAST does not
associate PHANGS-style parallel off-fields with the science, paper section 5). Its mosaics
are the "MAST" mosaics of the synthetic program, used by the comparisons, and the baseline
every bespoke step is measured against. The only departure: image3's source_catalog is
skipped (it needs aperture-correction references this context does not carry, and no
product uses its catalogue).

Exposures run in separate worker processes (spawned, CRDS environment set before crds is
imported), two at a time by default: memory stays per exposure, not per program.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from processing.jwst_stages import crds_environment, run_detector1, run_image2, run_image3, worker_init

log = logging.getLogger(__name__)

LV3_DEFAULT_PARAMS = {"source_catalog": {"skip": True}}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _lv12(uncal: str, workdir: str) -> tuple[str, float, float]:
    t = time.time()
    rate = run_detector1(Path(uncal), Path(workdir) / "rate")
    cal = run_image2(rate, Path(workdir) / "cal")
    return str(cal), time.time() - t, _peak_rss_mb()


def _lv3(cal_files: list[str], workdir: str, product: str, params: dict) -> tuple[str, float, float]:
    t = time.time()
    i2d = run_image3([Path(c) for c in cal_files], Path(workdir) / "lv3" / product, product, params)
    return str(i2d), time.time() - t, _peak_rss_mb()


def run_default_pipeline(
    program: str | Path,
    workdir: str | Path,
    targets: list[str] | None = None,
    bands: list[str] | None = None,
    workers: int = 2,
    lv3_params: dict | None = None,
) -> dict:
    """Run the three stages at jwst defaults; return {'mosaics': {target: {band: i2d}}, 'timing': ...}.

    ``lv3_params`` replaces :data:`LV3_DEFAULT_PARAMS` (e.g. to switch skymatch off, which on
    emission-filled fields subtracts real emission as "sky").
    """
    program, workdir = Path(program).resolve(), Path(workdir).resolve()
    index = json.loads((program / "program.json").read_text())
    truth = json.loads((program / "truth" / "truth.json").read_text())
    env = crds_environment(program / "crds", truth["crds_context"], "local")
    science = [
        e
        for e in index["exposures"]
        if e["kind"] == "science" and (not targets or e["target"] in targets) and (not bands or e["band"] in bands)
    ]
    timing: dict = {"lv12_s": {}, "lv3_s": {}, "peak_rss_mb": 0.0}
    groups: dict[tuple[str, str], list[str]] = {}
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker_init, initargs=(env,)) as pool:
        futures = {pool.submit(_lv12, str(program / e["file"]), str(workdir)): e for e in science}
        for fut, e in futures.items():
            cal, dt, rss = fut.result()
            groups.setdefault((e["target"], e["band"]), []).append(cal)
            timing["lv12_s"][Path(e["file"]).name] = round(dt, 2)
            timing["peak_rss_mb"] = max(timing["peak_rss_mb"], rss)
        lv3 = {
            key: pool.submit(
                _lv3, sorted(cals), str(workdir), f"{key[0]}_{key[1].lower()}", lv3_params or LV3_DEFAULT_PARAMS
            )
            for key, cals in sorted(groups.items())
        }
        mosaics: dict = {}
        for (target, band), fut in lv3.items():
            i2d, dt, rss = fut.result()
            mosaics.setdefault(target, {})[band] = i2d
            timing["lv3_s"][f"{target}_{band}"] = round(dt, 2)
            timing["peak_rss_mb"] = max(timing["peak_rss_mb"], rss)
    return {"mosaics": mosaics, "timing": timing}


def write_mast_mosaics(program: str | Path, workers: int = 2) -> dict:
    """The program's "MAST" level-3 mosaics: jwst defaults, kept as ``mast/<target>_<band>_i2d.fits``.

    Intermediate rate/cal files live in a scratch folder beside the program and go away.
    """
    import os
    import tempfile

    program = Path(program)
    (program / "mast").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mast-work-", dir=program.parent) as work:
        result = run_default_pipeline(program, work, workers=workers)
        files = {}
        for target, bands in result["mosaics"].items():
            for band, i2d in bands.items():
                dest = program / "mast" / f"{target}_{band.lower()}_i2d.fits"
                os.replace(i2d, dest)
                files.setdefault(target, {})[band] = str(dest.relative_to(program))
    return {"mosaics": files, "timing": result["timing"]}
