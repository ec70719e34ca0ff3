"""The engine on the real jwst pipeline: cached, resumable, failure-isolating, pinned."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from processing.executor import Engine, fits_fingerprint
from processing.pipeline import build_graph
from release.manifest import load_manifest
from tests.conftest import REPO, hlsp, linked_copy, product_file, write_manifest

PRODUCTS = [("synth1", "f200w"), ("synth1", "f770w"), ("synth2", "f200w"), ("synth2", "f770w")]


def product(workdir: Path, target: str, band: str) -> Path:
    return product_file(workdir / "products" / target / band, f"{target}_{band}_i2d.fits")


def test_first_run_makes_every_mosaic_with_provenance(engine_run):
    from astropy.io import fits

    lm = load_manifest(engine_run["manifest"])
    for target, band in PRODUCTS:
        p = product(engine_run["workdir"], target, band)
        h = fits.getheader(p)
        assert h["HLSPMANI"] == lm.manifest.content_hash()
        assert h["HLSPJWST"] == "3.0.0" and h["HLSPCRDS"] == "jwst_9001.pmap" and h["CRDS_CTX"] == "jwst_9001.pmap"
        assert h["HLSPVMIS"] is False
        prov = json.loads(p.with_suffix(".prov.json").read_text())
        assert prov["key"] == h["HLSPTASK"] and prov["provenance"]["parameters"]
        # the anchored mosaic: made from the astrometry stage's mosaic and tweakback, by task key
        assert [r["task"] for r in prov["inputs"]["mosaic"]] and [r["task"] for r in prov["inputs"]["tweakback"]]
        with fits.open(p) as hdul:
            assert "DQ" in hdul and "SCI" in hdul  # resample propagate_dq
    # every run leaves a log
    assert list((engine_run["workdir"] / "logs").glob("run-*.log"))
    print(f"\nfirst run: {engine_run['elapsed_s']:.1f} s")


def test_second_run_is_a_noop(engine_run, tmp_path):
    work = linked_copy(engine_run["workdir"], tmp_path / "work")  # the shared run's folder, cache and all
    t0 = time.time()
    proc = hlsp("run", str(engine_run["manifest"]), "--workdir", str(work), check_code=0)
    elapsed = time.time() - t0
    lines = [row for row in proc.stdout.splitlines() if row.startswith("│ lv")]
    for line in lines:
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert cells[2] == "0", line  # ran
    print(f"\nsecond run (all cached): {elapsed:.1f} s (first run {engine_run['elapsed_s']:.1f} s)")
    assert elapsed < 30


def test_parameter_change_reruns_only_that_target(engine_run, changed_run):
    rerun = sorted(t for t, s in changed_run["planned"].items() if s == "run")
    assert rerun == [
        "anchoring/synth2/F200W",
        "anchoring/synth2/F770W",
        "astrometry/synth2/F200W",
        "astrometry/synth2/F770W",
        "lv3/synth2/F200W",
        "lv3/synth2/F770W",
        "psf_matching/synth2/F200W",
        "psf_matching/synth2/F770W",
    ]
    assert changed_run["ok"] and changed_run["ran"] == rerun
    # synth1's products are the very same files as before; synth2's were remade
    for target, band in PRODUCTS:
        same = fits_fingerprint(product(changed_run["workdir"], target, band)) == fits_fingerprint(
            product(engine_run["workdir"], target, band)
        )
        assert same == (target == "synth1"), (target, band)


def test_default_retention_thins_then_recomputes_and_gives_the_keep_all_products(engine_run, changed_run, tmp_path):
    """The shared run kept everything; re-run with the default retention it runs nothing and
    releases its bulky intermediates. The changed manifest then recomputes the dropped
    intermediates it needs (synth2 F770W here: one band keeps the test short) and its product
    is the same as the keep-all run's."""
    from processing.cache import usage

    cache = linked_copy(engine_run["cache"], tmp_path / "cache")
    before = usage(cache)["total"]
    lm0 = load_manifest(engine_run["manifest"])
    first = Engine(lm0, build_graph(lm0), tmp_path / "w0", cache_dir=cache, keep="default").run()
    assert first.ok and not [t for t, r in first.results.items() if r.status == "ran"]
    after = usage(cache)
    # (bytes_released counts what no other link holds: here engine_run's cache still holds it all)
    assert after["thinned"] > 0 and after["total"] < before / 2, (before, after["total"])
    again = Engine(lm0, build_graph(lm0), tmp_path / "w0", cache_dir=cache, keep="default").plan()
    assert "run" not in again.values() and "not needed" in again.values()

    lm = load_manifest(changed_run["manifest"])
    engine = Engine(lm, build_graph(lm, ["synth2"], ["F770W"]), tmp_path / "work", cache_dir=cache, keep="default")
    summary = engine.run()
    ran = {t for t, r in summary.results.items() if r.status == "ran"}
    assert summary.ok and {"lv3/synth2/F770W", "psf_matching/synth2/F770W"} <= ran
    # lv3's inputs were dropped: recomputed, from the kept detector1 files (lv1 never reruns)
    assert any(t.startswith("lv2/") for t in ran) and not any(t.startswith("lv1/") for t in ran)
    assert fits_fingerprint(product(tmp_path / "work", "synth2", "f770w")) == fits_fingerprint(
        product(changed_run["workdir"], "synth2", "f770w")
    )


def test_kill_9_then_resume_gives_identical_products(engine_run, tmp_path):
    from tests.conftest import seed_cache

    cache = tmp_path / "cache"
    # one target and band, the early stages from the shared run's cache: what is tested is the
    # kill and the resume (of lv3 and everything after it), not the whole graph again
    seeded = seed_cache(engine_run["cache"], cache)
    only = ["--targets", "synth1", "--bands", "f770w"]
    cmd = [
        sys.executable,
        "-m",
        "release.cli",
        "run",
        str(engine_run["manifest"]),
        "--workdir",
        str(tmp_path / "work"),
        "--cache",
        str(cache),
        *only,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        done = list((cache / "objects").glob("*/*/task.json")) if (cache / "objects").exists() else []
        if len(done) >= seeded + 1:  # the run's first task published
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers, mid-stage
    proc.wait()
    killed_with = len(list((cache / "objects").glob("*/*/task.json")))
    assert not (tmp_path / "work" / "products").exists() or not any((tmp_path / "work" / "products").rglob("*.fits*"))
    # every published entry is whole
    for entry in (cache / "objects").glob("*/*"):
        assert (entry / "task.json").exists(), entry
    hlsp(
        "run",
        str(engine_run["manifest"]),
        "--workdir",
        str(tmp_path / "work"),
        "--cache",
        str(cache),
        *only,
        check_code=0,
    )
    assert not any((cache / "tmp").iterdir())  # the dead run's scratch is gone
    assert seeded + 1 <= killed_with < len(list((cache / "objects").glob("*/*/task.json"))), (
        seeded,
        killed_with,
    )  # killed mid-run
    for target, band in [("synth1", "f770w")]:
        a, b = product(tmp_path / "work", target, band), product(engine_run["workdir"], target, band)
        assert fits_fingerprint(a) == fits_fingerprint(b)
        wa, wb = _open(a).meta.wcs, _open(b).meta.wcs  # the WCS in the ASDF extension
        assert np.array_equal(
            np.array(wa(np.arange(0, 300, 37.0), np.arange(0, 300, 37.0))),
            np.array(wb(np.arange(0, 300, 37.0), np.arange(0, 300, 37.0))),
        )


def _open(path):
    from stdatamodels.jwst import datamodels

    return datamodels.open(str(path))


def test_corrupt_input_fails_its_task_and_the_other_target_completes(engine_run, tmp_path):
    lm0 = load_manifest(engine_run["manifest"])
    program = lm0.resolve_path(lm0.manifest.program.data.path)
    copy = tmp_path / "program"
    for src in program.rglob("*_uncal.fits"):
        dest = copy / src.relative_to(program)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, dest)
    truth = json.loads((program / "truth" / "truth.json").read_text())["exposures"]
    victim = next(
        p
        for p in sorted((copy / "uncal" / "synth2").glob("*mirimage_uncal.fits"))
        if truth[p.name[: -len("_uncal.fits")]]["kind"] == "science"
    )
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[: len(data) // 2])  # a truncated download
    shutil.copy(program / "program.json", copy / "program.json")
    os.symlink(program / "external", copy / "external")  # the reference catalogues
    os.symlink(program / "psf", copy / "psf")  # the bands' PSFs (PSF matching)
    manifest = write_manifest(tmp_path / "m.toml", copy)
    text = manifest.read_text().replace(f'crds_path = "{copy / "crds"}"', f'crds_path = "{program / "crds"}"')
    manifest.write_text(text)
    cache = linked_copy(engine_run["cache"], tmp_path / "cache")
    proc = hlsp("run", str(manifest), "--workdir", str(tmp_path / "work"), "--cache", str(cache), check_code=1)
    out = " ".join(proc.stdout.split())
    assert f"lv1 failed on {victim}" in out, out
    assert "Traceback" not in proc.stdout + proc.stderr
    for target, band in PRODUCTS:
        exists = product(tmp_path / "work", target, band).exists()
        assert exists == ((target, band) != ("synth2", "f770w")), (target, band)
    # nothing of the failed task was published, and the finished work is all still there
    assert not any((cache / "tmp").iterdir())
    assert all(product(engine_run["workdir"], t, b).exists() for t, b in PRODUCTS)


def test_jwst_version_mismatch_is_refused(engine_run, tmp_path):
    lm0 = load_manifest(engine_run["manifest"])
    program = lm0.resolve_path(lm0.manifest.program.data.path)
    old = write_manifest(tmp_path / "old.toml", program, pins_jwst="1.13.4")
    proc = hlsp("run", str(old), "--workdir", str(tmp_path / "work"), check_code=2)
    assert "pins.jwst is 1.13.4 but jwst 3.0.0 is installed" in " ".join(proc.stderr.split())
    assert not (tmp_path / "work" / "cache").exists() or not any((tmp_path / "work" / "cache" / "objects").iterdir())
    lm = load_manifest(old)
    cache = linked_copy(engine_run["cache"], tmp_path / "cache")
    engine = Engine(lm, build_graph(lm), tmp_path / "work", cache_dir=cache, allow_version_mismatch=True)
    assert engine.allow_mismatch
    # products made against the pin are different results: nothing is reused silently
    assert set(engine.plan().values()) == {"run"}


def test_borrowed_background_uses_the_lenders_off_fields(engine_run):
    lm = load_manifest(engine_run["manifest"])
    graph = build_graph(lm)
    lv2 = [t for t in graph.tasks.values() if t.stage == "lv2" and t.target == "synth2" and t.instrument == "miri"]
    assert lv2
    for t in lv2:
        background = [r["task"] for r in t.inputs["background"]]
        lenders = {graph.tasks[b].target for b in background}
        assert lenders == {"synth1"} and len(background) == 4
        assert all(graph.tasks[b].stage == "lv1" for b in background)
        assert t.params["bkg_subtract"]["sigma"] == 1.5


def test_nircam_exposures_are_destriped_against_the_truth(engine_run, effects_program, demo_release):
    """Both destriping stages run for NIRCam only, image3 reads their output, and against
    the injected stripes the result never has more row structure than image2 alone, stays
    near the per-row noise floor, and moves no flux."""
    from astropy.io import fits

    from tests.benchmarks.destriping import measure

    lm = load_manifest(engine_run["manifest"])
    graph = build_graph(lm)
    counts = graph.stage_counts()
    assert counts["destripe"] == 6 and counts["destripe_multi"] == 2  # NIRCam F200W: 4 + 2 exposures
    assert {r["task"].split("/")[0] for r in graph.tasks["lv3/synth1/F200W"].inputs["cal"]} == {"destripe_multi"}
    assert {r["task"].split("/")[0] for r in graph.tasks["lv3/synth1/F770W"].inputs["cal"]} == {"level_match"}
    nircam = fits.getheader(product(engine_run["workdir"], "synth1", "f200w"))
    miri = fits.getheader(product(engine_run["workdir"], "synth1", "f770w"))
    assert nircam["HLSPDS2"] > 0 and "HLSPDS1" in nircam and "HLSPDS2" not in miri
    released = fits.getheader(next(demo_release.rglob("*synth1*f200w*_img.fits")))
    assert released["HLSPDS2"] == nircam["HLSPDS2"]
    result = measure(effects_program, engine_run["cache"])
    assert len(result["exposures"]) == 6
    for r in result["exposures"]:
        assert r["both"] <= r["before"], r  # never more row structure than went in
        assert r["both_over_floor"] < 1.5, r  # near the noise floor of a row median
        assert abs(r["flux_change"]) < 0.005, r  # below 0.5% of the flux


def test_miri_is_lyot_separated_and_level_matched_against_the_truth(
    engine_run, effects_program, demo_release, tmp_path
):
    """MIRI full frames are split into imager and coronagraph parts, level matching (on for
    both instruments) merges them back with their own offsets, image3 reads its output with
    skymatch off, and against the truth the exposures' levels agree far better than level 2
    left them and than jwst's skymatch makes them."""
    from astropy.io import fits
    from astropy.table import Table

    from tests.benchmarks.level_matching import measure

    graph = build_graph(load_manifest(engine_run["manifest"]))
    counts = graph.stage_counts()
    assert counts["lyot"] == 6 and counts["level_match"] == 4  # MIRI exposures; every target and band
    assert {r["task"].split("/")[0] for r in graph.tasks["level_match/synth1/F770W"].inputs["cal"]} == {"lyot"}
    assert {r["task"].split("/")[0] for r in graph.tasks["destripe_multi/synth1/F200W"].inputs["cal"]} == {
        "level_match"
    }
    assert graph.tasks["lv3/synth1/F770W"].params["skymatch"] == {"skip": True}
    mosaic = fits.getheader(product(engine_run["workdir"], "synth1", "f770w"))
    assert "HLSPDLV" in mosaic and "HLSPDLC" in mosaic and "HLSPDLK" in mosaic
    released = fits.getheader(next(demo_release.rglob("*synth1*f770w*_img.fits")))
    assert released["HLSPDLV"] == mosaic["HLSPDLV"]
    tables = list(engine_run["cache"].glob("objects/*/*/synth1_f770w_levels.ecsv"))
    assert tables and len(Table.read(tables[0])) == 8  # 4 exposures x (imager, coronagraph)
    # (the mosaic's coronagraph-region measure is the bench's: make bench, level matching)
    result = measure(effects_program, engine_run["cache"], tmp_path / "bench-levels", lyot=False)
    for key in ("synth1/F770W", "synth2/F770W"):
        e = result[key]
        # against the image itself (image - true sky per part): every part at one level
        assert e["after"]["rms_all"] < 0.01 < e["before"]["rms_all"], (key, e)
        # (the coronagraph part is a tenth of the frame and holds dozens of the sky's red
        # supergiants, whose drizzled-vs-analytic PSF residuals move its median by ~0.01)
        assert e["after"]["rms_lyot_about_imager"] < 0.015 < e["before"]["rms_lyot_about_imager"], (key, e)
        assert e["after"]["rms_all"] < 0.1 * e["skymatch"]["rms_all"], (key, e)
        # against the injected offsets: the imager parts to a few 0.001 MJy/sr; all parts
        # within what the coronagraph's thin overlaps and the reconstructed master background allow
        assert e["offset_error"]["rms_imager"] < 0.005, (key, e)
        assert e["offset_error"]["rms_all"] < 0.03 < e["true_offset"]["rms_all"], (key, e)
        assert e["offset_error"]["rms_all"] < 0.25 * e["skymatch_offset_error"]["rms_all"], (key, e)
    step = result["synth1/F770W"]["mosaic"]
    assert step["step_over_noise"] < 0.1, step
