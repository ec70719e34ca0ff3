"""The cache does not multiply the data (processing/cache.py, processing/executor.py): under
the default retention an intermediate is thinned once every task reading it has its result,
recomputed when one must run again, and the results are the same as keeping everything; a
stage passing an input through links it; `hlsp cache verify` quarantines damage, which the
next run recomputes; `hlsp cache prune` keeps what the listed manifests reach, never while a
run holds the cache. On the toy program of tests/processing/test_stages.py (fast)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from astropy.io import fits

from processing import cache as cache_mod
from processing.errors import BadInput
from release.manifest import load_manifest
from tests.processing.test_stages import _engine, _registry


@pytest.fixture
def tiny_is_bulky(monkeypatch):
    """The toy files are 4x4 pixels: count every FITS output as bulky."""
    monkeypatch.setattr(cache_mod, "SMALL_BYTES", 0)


def _records(eng, stage):
    keys = eng.task_keys()
    return {tid: eng.cache.lookup(k) for tid, k in keys.items() if tid.startswith(stage + "/")}


def _products(eng):
    entries, missing = eng.product_index()
    assert not missing
    return {(e.product, e.target, e.band): fits.getdata(e.path) for e in entries}


def test_intermediates_are_thinned_and_recomputed_only_when_needed(toy, tiny_is_bulky):
    reg = _registry()
    eng = _engine(toy, reg)
    first = eng.run()
    assert first.ok and first.bytes_written > 0 and first.bytes_released > 0
    # toy_a (read by toy_b and toy_visit) is an intermediate: thinned; toy_b provides the
    # release's mosaics: kept whole, as is toy_visit (nothing reads it)
    a = _records(eng, "toy_a")
    read = {d for t in eng.graph.tasks.values() for d in t.deps}
    assert all(rec.get("dropped") for tid, rec in a.items() if tid in read)
    assert all(cache_mod.complete(r) for r in _records(eng, "toy_b").values())
    for tid, rec in a.items():
        if rec.get("dropped"):
            entry = eng.cache.entry(eng.task_keys()[tid])
            assert not any((entry / n).exists() for n in rec["dropped"]) and (entry / "task.json").exists()
    # again: nothing runs, the thinned intermediates are not needed
    again = _engine(toy, reg).run()
    assert again.count("ran") == 0 and again.count("not needed") == len([t for t in a if t in read])
    assert set(_engine(toy, reg).plan().values()) == {"cached", "not needed"}
    # what toy_b reads changed (the catalogue file the manifest names): toy_b runs again, and
    # the intermediates it reads are recomputed
    (toy["root"] / "cat.txt").write_text("0.7")
    lm = load_manifest(toy["manifest"])
    from processing.executor import Engine
    from processing.pipeline import build_graph

    eng3 = Engine(lm, build_graph(lm, registry=reg), toy["root"] / "work")
    assert {s for t, s in eng3.plan().items() if t.startswith("toy_b/")} == {"run"}
    third = eng3.run()
    assert third.ok
    ran = {t for t, r in third.results.items() if r.status == "ran"}
    assert {t for t in ran if t.startswith("toy_b/")} == {t for t in eng3.graph.tasks if t.startswith("toy_b/")}
    assert {t for t in ran if t.startswith("toy_a/")}  # recomputed for toy_b
    assert not {t for t in ran if t.startswith("toy_visit/")}  # not needed
    # the same products as a run that keeps everything, from scratch
    full = Engine(lm, build_graph(lm, registry=reg), toy["root"] / "work-all", keep="all")
    assert full.run().ok and full.run().bytes_released == 0
    mine, theirs = _products(eng3), _products(full)
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)
    assert all(cache_mod.complete(r) for r in _records(full, "toy_a").values())


def _pass_through(toy, name: str, unit: str, upstream: str, suffix: str, out_suffix: str):
    """A toy stage ``name`` that links its one input (``upstream``'s ``suffix`` file of the same
    unit) through unchanged as its ``out_suffix`` output (processing/fileio.py link_or_copy)."""
    from pydantic import BaseModel

    from processing.stages import Input, ModelParameters, Stage

    unit_name = "exposure" if unit == "exposure" else "product"
    (toy["mods"] / f"{name}.py").write_text(
        textwrap.dedent(f"""
        from pathlib import Path
        from processing.fileio import link_or_copy

        def run(inputs, outdir, params, context):
            out = Path(outdir) / (context["{unit_name}"] + "{out_suffix}")
            link_or_copy(inputs["a"][0], out)
            return [out]
    """)
    )

    class NoParams(BaseModel):
        pass

    return Stage(
        name,
        unit,
        (Input("a", "same", upstream, suffix),),
        (out_suffix,),
        f"{name}:run",
        ModelParameters(NoParams),
        memory_gb=0.1,
    )


def test_a_stage_passing_its_input_through_stores_no_copy(toy):
    """A stage that leaves its input unchanged links it (processing/fileio.py link_or_copy): one
    file in the cache; the engine does not stamp it (it stays the upstream's, whose record still
    matches)."""
    passer = _pass_through(toy, "toy_pass", "exposure", "toy_a", "_toya.fits", "_toyp.fits")
    eng = _engine(toy, _registry([passer]), keep="all")
    assert eng.run().ok
    keys = eng.task_keys()
    tid = next(t for t in keys if t.startswith("toy_pass/"))
    exposure = tid.split("/", 1)[1]
    mine = eng.cache.entry(keys[tid]) / f"{exposure}_toyp.fits"
    upstream = eng.cache.entry(keys[f"toy_a/{exposure}"]) / f"{exposure}_toya.fits"
    assert mine.stat().st_ino == upstream.stat().st_ino
    rec = eng.cache.lookup(keys[f"toy_a/{exposure}"])
    assert cache_mod.file_sha256(upstream) == rec["outputs"][upstream.name]


def test_verify_quarantines_damage_and_the_next_run_recomputes_it(toy, tmp_path):
    from processing.cache import verify

    reg = _registry()
    eng = _engine(toy, reg, keep="all")
    assert eng.run().ok
    keys = eng.task_keys()
    tid = "toy_b/alpha/F200W"
    victim = eng.cache.entry(keys[tid]) / "alpha_f200w_toyb.fits"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.unlink()
    victim.write_bytes(bytes(data))
    assert verify(eng.cache.root) == [(tid, "alpha_f200w_toyb.fits: content differs from the record (sha256)")]
    assert not eng.cache.entry(keys[tid]).exists() and any((eng.cache.root / "quarantine").iterdir())
    assert verify(eng.cache.root) == []
    again = _engine(toy, reg, keep="all").run()
    assert [t for t, r in again.results.items() if r.status == "ran"] == [tid]


def test_prune_keeps_what_the_listed_manifests_reach_and_waits_for_no_run(toy, tmp_path):
    from processing.cache import entries, prune
    from processing.fileio import folder_lock

    reg = _registry()
    eng = _engine(toy, reg, keep="all")
    assert eng.run().ok
    other = toy["root"] / "other.toml"  # another release: toy_b reads another catalogue
    (toy["root"] / "cat2.txt").write_text("0.9")
    other.write_text(toy["manifest"].read_text().replace('"cat.txt"', '"cat2.txt"'))
    from processing.executor import Engine
    from processing.pipeline import build_graph

    lm = load_manifest(other)
    e2 = Engine(lm, build_graph(lm, registry=reg), toy["root"] / "work", keep="all")
    assert e2.run().ok
    keep = set(e2.task_keys().values())
    only_first = set(eng.task_keys().values()) - keep
    assert only_first  # the first manifest's toy_b results
    root = eng.cache.root
    with folder_lock(root, "the task cache", "run", shared=True):  # a run in progress
        with pytest.raises(BadInput, match="in use by another hlsp command"):
            with folder_lock(root, "the task cache", "cache prune"):
                pass
    n, freed = prune(root, keep)
    assert n == len(only_first) and freed > 0
    assert {k for k, _, _ in entries(root)} == keep
    assert e2.plan() == {t: "cached" for t in e2.graph.tasks}


def test_the_cache_command(toy, tmp_path):
    """`hlsp cache du` says where the space goes, `verify` finds damage (exit 1) and
    quarantines it, `prune` is refused while a run holds the cache."""
    from processing.fileio import folder_lock
    from tests.conftest import hlsp

    reg = _registry()
    eng = _engine(toy, reg, keep="all")
    assert eng.run().ok
    work = toy["root"] / "work"
    proc = hlsp("cache", "du", "--workdir", str(work), check_code=0)
    assert "toy_a" in proc.stdout and "toy_b" in proc.stdout and "in 27 entries (0 thinned)" in proc.stdout
    hlsp("cache", "verify", "--workdir", str(work), check_code=0)
    victim = next((work / "cache" / "objects").glob("*/*/*_toya.fits"))
    victim.unlink()
    proc = hlsp("cache", "verify", "--workdir", str(work), check_code=1)
    assert f"{victim.name} is missing" in " ".join(proc.stdout.split())
    with folder_lock(work / "cache", "the task cache", "run", shared=True):
        proc = hlsp("cache", "prune", "--keep", str(toy["manifest"]), "--workdir", str(work), check_code=2)
    assert "is in use by another hlsp command" in " ".join(proc.stderr.split())
    proc = hlsp("cache", "du", "--workdir", str(tmp_path), check_code=2)
    assert "is not a task cache" in proc.stderr


def test_the_default_registry_keeps_the_expensive_stages_and_the_product_providers():
    """detector1 (declared retain: the most expensive step, every later release starts from its
    rate files) and the providers of the release products stay whole; lv3's and absolute
    astrometry's mosaics, which later stages refine, are intermediates."""
    from processing.registry import default_registry

    reg = default_registry()
    assert reg.kept_whole() == {"lv1", "anchoring", "psf_matching"}
    assert {s.name for s in reg.product_providers().values()} == {"anchoring", "psf_matching"}


def test_a_thinned_stage_whose_product_a_later_stage_refines_is_not_rerun(toy, tiny_is_bulky):
    """toy_r refines toy_b's mosaic (both declare ``img``; toy_r provides it): toy_b is an
    intermediate, thinned; with toy_r cached, a second run and the plan leave toy_b alone (the
    demo's lv3 under astrometry: a run must not redo a thinned mosaic nothing needs)."""
    from pydantic import BaseModel

    from processing.stages import Input, ModelParameters, Product, Stage
    from tests.processing.test_stages import _run_all

    (toy["mods"] / "toy_r.py").write_text(
        textwrap.dedent("""
        from pathlib import Path
        from astropy.io import fits

        def run(inputs, outdir, params, context):
            out = Path(outdir) / (context["product"] + "_toyb.fits")
            fits.PrimaryHDU(fits.getdata(inputs["mosaic"][0]) + 1.0).writeto(out)
            return [out]
    """)
    )

    class NoParams(BaseModel):
        pass

    r = Stage(
        "toy_r",
        "target_band",
        (Input("mosaic", "same", "toy_b", "_toyb.fits"),),
        ("_toyb.fits",),
        "toy_r:run",
        ModelParameters(NoParams),
        products=(Product("img", "_toyb.fits"),),
        refines=("toy_b", "_toyb.fits"),
        memory_gb=0.1,
    )
    reg = _registry([r])
    assert reg.product_providers()["img"].name == "toy_r" and "toy_b" not in reg.kept_whole()
    eng, first = _run_all(toy, reg, workers=1)
    assert first.ok
    b = _records(eng, "toy_b")
    assert b and all(rec.get("dropped") for rec in b.values())
    plan = _engine(toy, reg).plan()
    assert {s for t, s in plan.items() if t.startswith("toy_b/")} == {"not needed"}
    again = _engine(toy, reg).run()
    assert again.ok and again.count("ran") == 0


def test_prune_also_removes_the_product_links_of_what_it_removes(toy, tiny_is_bulky):
    """The work folder's products/ links hold the last run's products: a prune that removes
    their entries removes the links and their index lines too (else the bytes stay alive),
    and keeps the links of what it keeps."""
    import json

    reg = _registry()
    work = toy["root"] / "work"
    first = _engine(toy, reg)
    assert first.run().ok
    other = toy["root"] / "other.toml"
    (toy["root"] / "cat2.txt").write_text("0.9")
    other.write_text(toy["manifest"].read_text().replace('"cat.txt"', '"cat2.txt"'))
    from processing.executor import Engine, unpublish
    from processing.pipeline import build_graph

    lm = load_manifest(other)
    second = Engine(lm, build_graph(lm, registry=reg), work)
    assert second.run().ok
    assert first.run().ok  # all cached: products/ now links the first manifest's products
    index = json.loads((work / "products" / "index.json").read_text())["products"]
    firsts = {e["key"] for e in index}
    keep = set(second.task_keys().values())
    assert firsts - keep
    n, _ = unpublish(work, keep)
    after = json.loads((work / "products" / "index.json").read_text())["products"]
    assert n == len([e for e in index if e["key"] not in keep]) and all(e["key"] in keep for e in after)
    assert all(not (work / e["path"]).exists() for e in index if e["key"] not in keep)
    # then the entries (`hlsp cache prune` does both, in this order): nothing of the first
    # manifest's own is left, not even in the content store; the second has nothing to run
    from processing.cache import prune

    prune(first.cache.root, keep)
    assert all(p.stat().st_nlink > 1 for p in (first.cache.root / "content").glob("*/*"))
    assert set(Engine(lm, build_graph(lm, registry=reg), work).plan().values()) <= {"cached", "not needed"}


BIG_B = """
from pathlib import Path
import numpy as np
from astropy.io import fits

def run(inputs, outdir, params, context):
    level = float(np.mean([fits.getdata(p).mean() for p in inputs["members"]]))
    out = Path(outdir) / (context["product"] + "_toyb.fits")
    y, x = np.mgrid[:640, :640]
    image = level + np.round(16 * np.sin(x / 50.0) * np.cos(y / 70.0)) / 16  # binary fractions
    fits.PrimaryHDU(image.astype(np.float32)).writeto(out)
    return [out]

def catalog(lm, unit):
    return [lm.resolve_path(lm.manifest.targets[unit["target"]].astrometry_catalog)]
"""


def test_kept_entries_store_their_bulky_fits_files_compressed(toy):
    """Under the default retention a kept entry (toy_b provides the release's mosaics) stores a
    bulky FITS output gzip-compressed: the record keeps the FITS bytes' sha256 and lists the
    stored file; a stage reading it gets the FITS bytes (toy_c passes it through: the same
    sha256, not stamped), the product index hands packaging the compressed file, which astropy
    reads as it is, and `verify` checks the stored bytes. ``keep="all"`` stores every file as
    written, and the products are the same."""
    from processing.cache import stored, verify

    (toy["mods"] / "toy_b.py").write_text(textwrap.dedent(BIG_B))
    c = _pass_through(toy, "toy_c", "target_band", "toy_b", "_toyb.fits", "_toyc.fits")
    reg = _registry([c])
    eng = _engine(toy, reg)
    summary = eng.run()
    assert summary.ok
    keys = eng.task_keys()
    tid = "toy_b/alpha/F200W"
    rec = eng.cache.lookup(keys[tid])
    name = "alpha_f200w_toyb.fits"
    entry = eng.cache.entry(keys[tid])
    assert list(rec["packed"]) == [name] and not (entry / name).exists()
    gz = stored(entry, name, rec)
    assert gz.name == name + ".gz" and rec["bytes"][name] == gz.stat().st_size
    raw = 2880 * 2 + 640 * 640 * 4  # header and data blocks of the FITS file the stage wrote
    assert gz.stat().st_size < raw / 2
    assert cache_mod.file_sha256(gz) == rec["packed"][name]
    # the reader got the FITS bytes: its pass-through is the mosaic itself, unstamped
    crec = eng.cache.lookup(keys["toy_c/alpha/F200W"])
    assert crec["outputs"]["alpha_f200w_toyc.fits"] == rec["outputs"][name] and "packed" not in crec
    assert (
        fits.getval(eng.cache.entry(keys["toy_c/alpha/F200W"]) / "alpha_f200w_toyc.fits", "HLSPTASK", 0) == (keys[tid])
    )
    # packaging reads the stored file (verified against the record) as FITS
    entries, missing = eng.product_index()
    assert not missing and all(e.path.name.endswith(".fits.gz") for e in entries)
    assert (eng.workdir / "products" / "alpha" / "f200w" / (name + ".gz")).samefile(gz)
    assert (eng.workdir / "products" / "alpha" / "f200w" / "alpha_f200w_toyb.prov.json").is_file()
    full = _engine(toy, reg, work="work-all", keep="all")
    assert full.run().ok
    frec = full.cache.lookup(keys[tid])
    assert "packed" not in frec and frec["outputs"][name] == rec["outputs"][name]
    mine, theirs = _products(eng), _products(full)
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)
    # verify re-hashes the stored bytes: damage is found and quarantined
    assert verify(eng.cache.root) == []
    data = bytearray(gz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gz.unlink()
    gz.write_bytes(bytes(data))
    assert verify(eng.cache.root) == [(tid, f"{name}.gz: content differs from the record (sha256)")]
