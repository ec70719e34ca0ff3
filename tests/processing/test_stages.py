"""The engine's pieces on a tiny fake program and a toy registry (fast: no jwst run).

Toy stages are plain modules written into a temporary folder: a per-exposure stage that
reads the raw file, a per-visit reference stage, a per-(target, band) stage over the members
and a reference band, and one reading a file the manifest names. They run through the real
graph builder, cache keys, executors and product index.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processing import executor as executor_mod
from processing.errors import BadInput
from processing.executor import Engine, clear_code_caches
from processing.pipeline import build_graph
from processing.stages import Input, ModelParameters, Product, Registry, RegistryError, Stage
from release.manifest import load_manifest
from tests.conftest import REPO

TOY_A = """
from pathlib import Path
from astropy.io import fits

def run(inputs, outdir, params, context):
    data = fits.getdata(inputs["raw"][0])
    out = Path(outdir) / (context["exposure"] + "_toya.fits")
    fits.PrimaryHDU(data * params["gain"]).writeto(out)
    return [out]
"""
TOY_B = """
from pathlib import Path
import numpy as np
from astropy.io import fits

def run(inputs, outdir, params, context):
    stack = np.mean([fits.getdata(p) for p in inputs["members"]], axis=0)
    ref = [float(fits.getdata(p).mean()) for p in inputs.get("reference", [])]
    extra = [float(Path(p).read_text()) for p in inputs.get("catalog", [])]
    out = Path(outdir) / (context["product"] + "_toyb.fits")
    hdu = fits.PrimaryHDU(stack + sum(extra))
    hdu.header["NREF"] = len(ref)
    hdu.writeto(out)
    return [out]

def catalog(lm, unit):
    return [lm.resolve_path(lm.manifest.targets[unit["target"]].astrometry_catalog)]
"""
TOY_VISIT = """
from pathlib import Path
from astropy.io import fits

def run(inputs, outdir, params, context):
    out = Path(outdir) / (context["exposure"] + "_toyv.fits")
    fits.PrimaryHDU(fits.getdata(inputs["rate"][0]) * 0 + len(inputs["ref"])).writeto(out)
    return [out]
"""


def _exposure(
    path: Path, target: str, inst: str, band: str, visit: str, mjd: float, parallel: bool = False, value: float = 1.0
):
    h = fits.Header()
    h.update(
        TARGPROP=target.upper(),
        INSTRUME=inst.upper(),
        FILTER=band,
        EXPRIPAR="PARALLEL_COORDINATED" if parallel else "PRIME",
        PROGRAM="09001",
        OBSERVTN="001",
        VISIT=visit,
        EXPSTART=mjd,
    )
    fits.PrimaryHDU(np.full((4, 4), value, dtype=np.float32), header=h).writeto(path)


def toy_manifest(bands: list[str], targets: str) -> str:
    """A manifest for a fake program in ``raw/`` (beside it): the release and pins, ``bands``,
    the ``targets`` tables given, and beta borrowing alpha's MIRI off-fields."""
    import json

    return f"""
[release]
project = "toy"
title = "toy"
version = "1.0.0"
doi = "10.17909/toy"
lead = "T"
pi = "T"
contact = {{ name = "T", email = "t@example.org" }}
[pins]
jwst = "3.0.0"
crds_context = "jwst_9001.pmap"
[program]
proposal_ids = [9001]
instruments = ["nircam", "miri"]
bands = {json.dumps(bands)}
data = {{ source = "local", path = "raw" }}
{targets}
[targets.beta.miri_background]
source = "borrowed"
borrow_from = "alpha"
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A fake program (2 targets, NIRCam F200W/F300M in two visits, MIRI F770W with off-fields),
    its manifest, and toy stage modules importable as toy_a, toy_b, toy_visit."""
    mods = tmp_path / "mods"
    mods.mkdir()
    for name, src in (("toy_a", TOY_A), ("toy_b", TOY_B), ("toy_visit", TOY_VISIT)):
        (mods / f"{name}.py").write_text(textwrap.dedent(src))
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.setenv("PYTHONPATH", f"{mods}:{REPO}")  # spawned workers import them too
    for name in ("toy_a", "toy_b", "toy_visit"):
        sys.modules.pop(name, None)
    clear_code_caches()
    raw = tmp_path / "raw"
    raw.mkdir()
    n = 0
    for target in ("alpha", "beta"):
        for band, inst in (("F200W", "nircam"), ("F300M", "nircam"), ("F770W", "miri")):
            for visit in ("001", "002"):
                n += 1
                _exposure(
                    raw / f"jw09001{target}{band.lower()}{visit}_uncal.fits",
                    target,
                    inst,
                    band,
                    visit,
                    60000 + n / 100,
                    value=n,
                )
        _exposure(raw / f"jw09001{target}bkg_uncal.fits", target, "miri", "F770W", "003", 60001, parallel=True)
    (tmp_path / "cat.txt").write_text("0.5")
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        toy_manifest(
            ["F200W", "F300M", "F770W"],
            """
[targets.alpha]
ra = 10.0
dec = 1.0
astrometry_catalog = "cat.txt"
[targets.beta]
ra = 20.0
dec = 2.0
astrometry_catalog = "cat.txt"
""",
        )
    )
    return {"root": tmp_path, "manifest": manifest, "mods": mods, "lm": load_manifest(manifest)}


def _registry(extra: list[Stage] | None = None) -> Registry:
    from pydantic import BaseModel, Field

    class Gain(BaseModel):
        gain: float = Field(2.0, description="multiplier, dimensionless")

    class Ref(BaseModel):
        reference_band: str = Field("F300M", description="band the visit reference is taken from")

    a = Stage(
        "toy_a",
        "exposure",
        (Input("raw", "raw"),),
        ("_toya.fits",),
        "toy_a:run",
        ModelParameters(Gain, {"miri": {"gain": 3.0}}),
        exposures="all",
        memory_gb=0.1,
    )
    v = Stage(
        "toy_visit",
        "exposure",
        (Input("rate", "same", "toy_a", "_toya.fits"), Input("ref", "visit_reference", "toy_a", "_toya.fits")),
        ("_toyv.fits",),
        "toy_visit:run",
        ModelParameters(Ref),
        instruments=("nircam",),
        memory_gb=0.1,
    )
    b = Stage(
        "toy_b",
        "target_band",
        (Input("members", "members", "toy_a", "_toya.fits"), Input("catalog", "manifest_file", files="toy_b:catalog")),
        ("_toyb.fits",),
        "toy_b:run",
        ModelParameters(Ref),
        products=(Product("img", "_toyb.fits"),),
        memory_gb=0.1,
    )
    return Registry([b, v, a] + (extra or []))  # declared out of order on purpose


def _engine(toy, registry, work="work", **kw) -> Engine:
    lm = toy["lm"]
    return Engine(lm, build_graph(lm, registry=registry), toy["root"] / work, **kw)


# -- declarations and the graph -------------------------------------------------------------------


def test_registry_orders_stages_by_their_connections_and_refuses_bad_declarations():
    reg = _registry()
    assert reg.order == ["toy_a", "toy_b", "toy_visit"] or reg.order == ["toy_a", "toy_visit", "toy_b"]
    assert reg.order[0] == "toy_a"
    a = reg["toy_a"]
    with pytest.raises(RegistryError, match="declared twice"):
        Registry([a, a])
    with pytest.raises(RegistryError, match="reads 'nope', which is not declared"):
        Registry([Stage("x", "exposure", (Input("i", "same", "nope", "_a.fits"),), ("_x.fits",), "m:f", a.parameters)])
    with pytest.raises(RegistryError, match="cycle"):
        Registry(
            [
                Stage("x", "target_band", (Input("i", "same", "y", ""),), ("_x",), "m:f", a.parameters),
                Stage("y", "target_band", (Input("i", "same", "x", ""),), ("_y",), "m:f", a.parameters),
            ]
        )
    with pytest.raises(RegistryError, match="relation 'sideways'"):
        Registry([Stage("x", "exposure", (Input("i", "sideways", "x", ""),), ("_x",), "m:f", a.parameters)])


def test_graph_from_declarations(toy):
    graph = build_graph(toy["lm"], registry=_registry())
    counts = graph.stage_counts()
    # toy_a: 12 science exposures + alpha's 1 off-field (lent to beta: one task, alpha's); no beta own
    # off-field is used (beta borrows), so it is not in the graph
    assert counts == {"toy_a": 13, "toy_b": 6, "toy_visit": 8}, counts
    b = graph.tasks["toy_b/beta/F770W"]
    assert [r["task"] for r in b.inputs["members"]] == ["toy_a/jw09001betaf770w001", "toy_a/jw09001betaf770w002"]
    assert b.inputs["catalog"] == [{"file": str(toy["root"] / "cat.txt")}]
    v = graph.tasks["toy_visit/jw09001alphaf200w002"]
    assert v.inputs["ref"] == [{"task": "toy_a/jw09001alphaf300m002", "suffix": "_toya.fits"}]
    assert graph.tasks["toy_a/jw09001alphabkg"].target == "alpha"
    # instrument defaults over the model's: MIRI gain 3, NIRCam 2
    assert graph.tasks["toy_a/jw09001alphaf770w001"].params == {"gain": 3.0}
    assert graph.tasks["toy_a/jw09001alphaf200w001"].params == {"gain": 2.0}
    order = [t.id for t in graph.order()]
    for t in graph.tasks.values():
        assert all(order.index(d) < order.index(t.id) for d in t.deps)
    # a relation that needs a unit not in the run is refused, naming both
    with pytest.raises(BadInput, match="reference band F300M of alpha, which is not in this run"):
        build_graph(toy["lm"], bands=["F200W"], registry=_registry())


def test_a_ranked_list_of_reference_bands_selects_every_observed_one_in_order(toy):
    """``reference_band`` as a list: the reference input holds each band of it the target was
    observed in (not the unit's own), in rank, each with its band in the task's context (and so
    in its key); a single band keeps the plain selection."""
    from pydantic import BaseModel, Field

    class Ranked(BaseModel):
        reference_band: str | list[str] = Field(["F444W", "F300M", "F200W"], description="ranked reference bands")

    class One(BaseModel):
        reference_band: str = Field("F300M", description="the reference band")

    r = Stage(
        "toy_r",
        "target_band",
        (
            Input("mosaic", "same", "toy_b", "_toyb.fits"),
            Input("ref", "reference_band", "toy_b", "_toyb.fits", optional=True),
        ),
        ("_toyr.fits",),
        "toy_b:run",
        ModelParameters(Ranked),
        instruments=("nircam",),
        memory_gb=0.1,
    )
    graph = build_graph(toy["lm"], registry=_registry([r]))
    f200w, f300m = graph.tasks["toy_r/alpha/F200W"], graph.tasks["toy_r/alpha/F300M"]
    assert f200w.inputs["ref"] == [{"task": "toy_b/alpha/F300M", "suffix": "_toyb.fits", "facts": {"band": "F300M"}}]
    assert f200w.context["facts"]["ref"] == [{"band": "F300M"}]
    assert [x["facts"]["band"] for x in f300m.inputs["ref"]] == ["F200W"]
    # one band: the plain reference, no facts
    single = Stage(r.name, r.unit, r.inputs, r.outputs, r.run, ModelParameters(One), instruments=r.instruments)
    plain = build_graph(toy["lm"], registry=_registry([single])).tasks["toy_r/alpha/F200W"]
    assert plain.inputs["ref"] == [{"task": "toy_b/alpha/F300M", "suffix": "_toyb.fits"}]
    assert "facts" not in plain.context


def test_model_parameters_check_strictly():
    from pydantic import BaseModel, Field

    class P(BaseModel):
        sigma: float = Field(3.0, description="clip, in standard deviations")
        iterations: int = 5

    spec = ModelParameters(P)
    assert spec.check({"sigma": 2}, "p") == ([], {"sigma": 2.0})
    problems, _ = spec.check({"sigma": "2"}, "p.x")
    assert problems and problems[0][0] == "p.x.sigma"
    problems, _ = spec.check({"sigmaa": 2.0}, "p.x")
    assert "did you mean 'sigma'" in problems[0][1]
    assert spec.default_values("miri") == {"sigma": 3.0, "iterations": 5}


# -- keys ---------------------------------------------------------------------------------------


def test_editing_a_stage_module_changes_that_stage_and_its_dependents_only(toy):
    reg = _registry()
    before = _engine(toy, reg).task_keys()
    (toy["mods"] / "toy_visit.py").write_text(TOY_VISIT + "\n# a change\n")
    clear_code_caches()
    after = _engine(toy, reg).task_keys()
    changed = {t for t in before if before[t] != after[t]}
    assert changed == {t for t in before if t.startswith("toy_visit/")}
    (toy["mods"] / "toy_a.py").write_text(TOY_A + "\n# a change\n")
    clear_code_caches()
    again = _engine(toy, reg).task_keys()
    assert {t for t in after if after[t] != again[t]} == set(before)  # everything reads toy_a


def test_a_module_imported_inside_a_function_is_part_of_the_stage_code(toy):
    """The code version is derived by following imports, inside functions too: editing a
    module toy_visit imports only within its run function changes toy_visit's keys (it has no
    dependents here) and nothing else's; a module of the same package it never imports does not."""
    import dataclasses

    pkg = toy["mods"] / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scale.py").write_text("FACTOR = 1\n")
    (pkg / "unused.py").write_text("X = 1\n")
    (pkg / "visit.py").write_text(
        TOY_VISIT.replace(
            "def run(inputs, outdir, params, context):\n",
            "def run(inputs, outdir, params, context):\n    from toypkg.scale import FACTOR  # only here\n",
        )
    )
    base = _registry()
    reg = Registry(
        [dataclasses.replace(base[n], run="toypkg.visit:run") if n == "toy_visit" else base[n] for n in base.order]
    )
    from processing.executor import code_closure

    assert [n for n, _ in code_closure("toypkg.visit")] == ["toypkg", "toypkg.scale", "toypkg.visit"]
    before = _engine(toy, reg).task_keys()
    (pkg / "unused.py").write_text("X = 2\n")
    clear_code_caches()
    assert _engine(toy, reg).task_keys() == before
    (pkg / "scale.py").write_text("FACTOR = 2\n")
    clear_code_caches()
    after = _engine(toy, reg).task_keys()
    assert {t for t in before if before[t] != after[t]} == {t for t in before if t.startswith("toy_visit/")}


def test_the_real_stages_code_is_what_they_import(tmp_path):
    """On a temporary copy of processing/: editing common/coronagraph.py (which level matching
    imports only inside its functions) changes the code version of lyot and level_match, no
    other stage's; every stage's code excludes the registry and the synthetic program."""
    import shutil
    import subprocess

    probe = (
        "import json; from processing.registry import REGISTRY; from processing.executor import code_version, "
        "code_closure; print(json.dumps({s: [code_version(REGISTRY[s].run), [n for n, _ in "
        "code_closure(REGISTRY[s].run.split(':')[0])]] for s in REGISTRY.order}))"
    )

    def versions(root):
        env = {**os.environ, "PYTHONPATH": str(root)}
        out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    copy = tmp_path / "src"
    shutil.copytree(REPO / "processing", copy / "processing", ignore=shutil.ignore_patterns("__pycache__"))
    before = versions(copy)
    for stage, (_, modules) in before.items():
        assert not [m for m in modules if m.startswith("processing.simulate") or m == "processing.registry"], stage
    assert "processing.common.coronagraph" in before["level_match"][1]
    shared = copy / "processing" / "common" / "coronagraph.py"
    shared.write_text(shared.read_text() + "\n# an edit\n")
    after = versions(copy)
    assert {s for s in before if before[s][0] != after[s][0]} == {"lyot", "level_match"}


def test_replacing_an_input_file_changes_exactly_the_tasks_that_read_it(toy):
    reg = _registry()
    before = _engine(toy, reg).task_keys()
    (toy["root"] / "cat.txt").write_text("0.25")  # the manifest's file, read by toy_b only
    after = _engine(toy, reg).task_keys()
    assert {t for t in before if before[t] != after[t]} == {t for t in before if t.startswith("toy_b/")}
    raw = toy["root"] / "raw" / "jw09001alphaf200w001_uncal.fits"
    with fits.open(raw, mode="update") as hdul:
        hdul[0].data[0, 0] = 99.0
    again = _engine(toy, reg).task_keys()
    assert {t for t in after if after[t] != again[t]} == {
        "toy_a/jw09001alphaf200w001",
        "toy_visit/jw09001alphaf200w001",
        "toy_b/alpha/F200W",
    }


def test_keys_do_not_depend_on_where_the_program_lives(toy, tmp_path_factory):
    import shutil

    reg = _registry()
    here = _engine(toy, reg).task_keys()
    elsewhere = tmp_path_factory.mktemp("other-machine")
    shutil.copytree(toy["root"] / "raw", elsewhere / "raw")
    shutil.copy(toy["root"] / "cat.txt", elsewhere / "cat.txt")
    shutil.copy(toy["manifest"], elsewhere / "m.toml")
    lm = load_manifest(elsewhere / "m.toml")
    there = Engine(lm, build_graph(lm, registry=reg), elsewhere / "work").task_keys()
    assert here == there


def test_crds_context_content_enters_the_keys(tmp_path):
    from processing.inputs import HashIndex

    maps = tmp_path / "mappings" / "jwst"
    refs = tmp_path / "references" / "jwst" / "miri"
    maps.mkdir(parents=True)
    refs.mkdir(parents=True)
    (maps / "jwst_9001.pmap").write_text("selector = {'MIRI' : 'jwst_miri_9001.imap'}")
    (maps / "jwst_miri_9001.imap").write_text("selector = {'FLAT' : 'jwst_miri_flat_9001.rmap'}")
    (maps / "jwst_miri_flat_9001.rmap").write_text("selector = {'x' : 'jwst_miri_flat_0001.fits'}")
    (refs / "jwst_miri_flat_0001.fits").write_bytes(b"flat one")
    hashes = HashIndex(tmp_path / "h.json")
    a = executor_mod.crds_fingerprint(tmp_path, "jwst_9001.pmap", hashes)
    (refs / "jwst_miri_flat_0001.fits").write_bytes(b"flat two, same name")
    b = executor_mod.crds_fingerprint(tmp_path, "jwst_9001.pmap", HashIndex(tmp_path / "h2.json"))
    (maps / "jwst_miri_flat_9001.rmap").write_text("selector = {'x' : 'jwst_miri_flat_0002.fits'}")
    c = executor_mod.crds_fingerprint(tmp_path, "jwst_9001.pmap", HashIndex(tmp_path / "h3.json"))
    assert len({a, b, c}) == 3 and all(x.startswith("jwst_9001.pmap:") for x in (a, b, c))
    assert executor_mod.crds_fingerprint(None, "jwst_9001.pmap", hashes) == "jwst_9001.pmap"
    # a real CRDS (remote/auto modes): references by name, so a download changes no key
    remote = executor_mod.crds_fingerprint(
        tmp_path, "jwst_9001.pmap", HashIndex(tmp_path / "h4.json"), references_by_content=False
    )
    (refs / "jwst_miri_flat_0002.fits").write_bytes(b"downloaded now")
    assert (
        executor_mod.crds_fingerprint(
            tmp_path, "jwst_9001.pmap", HashIndex(tmp_path / "h5.json"), references_by_content=False
        )
        == remote
    )
    assert remote != c  # the mappings still count by content


# -- running toy stages -------------------------------------------------------------------------


def _run_all(toy, reg, **kw):
    eng = _engine(toy, reg, **kw)
    summary = eng.run()
    assert summary.ok, {t: r.error for t, r in summary.results.items() if r.error}
    return eng, summary


def test_a_toy_stage_added_in_its_declaration_alone_runs_and_provides_its_product(toy):
    """A new stage: its module and its declaration in a registry; nothing else changes. It
    runs on the local executor, is cached, measured per task, and its product is indexed."""
    (toy["mods"] / "toy_c.py").write_text(
        textwrap.dedent("""
        from pathlib import Path
        from astropy.io import fits

        def run(inputs, outdir, params, context):
            data = sum(fits.getdata(p) for p in inputs["bands"])
            out = Path(outdir) / (context["target"] + "_nircam_toyc.fits")
            fits.PrimaryHDU(data).writeto(out)
            (Path(outdir) / "scratch.tmp").write_text("not an output: removed before publishing")
            return [out]
    """)
    )
    from pydantic import BaseModel

    class NoParams(BaseModel):
        pass

    c = Stage(
        "toy_c",
        "target_instrument",
        (Input("bands", "members", "toy_b", "_toyb.fits"),),
        ("_toyc.fits",),
        "toy_c:run",
        ModelParameters(NoParams),
        instruments=("nircam",),
        products=(Product("img-sum", "_toyc.fits"),),
        memory_gb=0.1,
    )
    reg = _registry([c])
    eng, summary = _run_all(toy, reg, workers=2)
    assert summary.count("ran") == len(eng.graph.tasks) == 13 + 6 + 8 + 2
    rec = summary.results["toy_c/alpha/nircam"].record
    assert list(rec["outputs"]) == ["alpha_nircam_toyc.fits"] and rec["peak_rss_scope"] in ("task", "worker")
    assert 10 < rec["peak_rss_mb"] < 2000
    entries, missing = eng.product_index()
    assert not missing
    assert sorted({e.product for e in entries}) == ["img", "img-sum"]
    total = fits.getdata(next(e.path for e in entries if e.product == "img-sum" and e.target == "alpha"))
    f200 = fits.getdata(
        next(e.path for e in entries if e.product == "img" and (e.target, e.band) == ("alpha", "F200W"))
    )
    f300 = fits.getdata(
        next(e.path for e in entries if e.product == "img" and (e.target, e.band) == ("alpha", "F300M"))
    )
    assert np.allclose(total, f200 + f300)
    index = json.loads((eng.workdir / "products" / "index.json").read_text())
    assert {p["product"] for p in index["products"]} == {"img", "img-sum"}
    assert _engine(toy, reg).plan() == {t: "cached" for t in eng.graph.tasks}
    # an altered cache entry is never handed to packaging
    victim = next(e.path for e in entries if e.product == "img-sum")
    victim.chmod(0o644)
    with fits.open(victim, mode="update") as hdul:
        hdul[0].data[0, 0] += 1
    with pytest.raises(executor_mod.WorkFailed, match="content differs from its cache record"):
        eng.product_index()


def test_dask_executor_gives_the_local_executors_results(toy):
    local, _ = _run_all(toy, _registry(), workers=1)
    dask_eng, summary = _run_all(
        toy, _registry(), work="work-dask", cache_dir=toy["root"] / "cache-dask", executor="dask", workers=2
    )
    assert summary.executor == "dask" and summary.count("ran") == len(dask_eng.graph.tasks)
    assert dask_eng.task_keys() == local.task_keys()
    for e1, e2 in zip(*(sorted(e.product_index()[0], key=lambda x: x.task) for e in (local, dask_eng))):
        assert e1.task == e2.task and np.array_equal(fits.getdata(e1.path), fits.getdata(e2.path))


def test_a_local_worker_that_dies_fails_its_task_named_and_the_rest_still_run(toy):
    """A worker killed mid-task (the kernel's OOM killer, kill -9) breaks the process pool and
    fails every task in it: each is run once more in a new pool; a task that kills its worker
    twice fails with the reason (no traceback), the rest complete, and a rerun resumes."""
    (toy["mods"] / "toy_die.py").write_text(
        textwrap.dedent("""
        import os, signal
        from pathlib import Path
        from astropy.io import fits

        def run(inputs, outdir, params, context):
            marker = Path(params["marker"])
            if (context["target"], context["band"]) == ("alpha", "F200W"):
                deaths = len(marker.read_text()) if marker.exists() else 0
                if deaths < 2:  # dies on its first two attempts
                    marker.write_text("x" * (deaths + 1))
                    os.kill(os.getpid(), signal.SIGKILL)
            out = Path(outdir) / (context["target"] + "_" + context["band"].lower() + "_die.fits")
            fits.PrimaryHDU(fits.getdata(inputs["mosaic"][0])).writeto(out)
            return [out]
    """)
    )
    from pydantic import BaseModel

    class Marker(BaseModel):
        marker: str = str(toy["root"] / "deaths")

    die = Stage(
        "toy_die",
        "target_band",
        (Input("mosaic", "same", "toy_b", "_toyb.fits"),),
        ("_die.fits",),
        "toy_die:run",
        ModelParameters(Marker),
        memory_gb=0.1,
    )
    reg = _registry([die])
    summary = _engine(toy, reg, workers=2).run()
    failed = {t: r.error for t, r in summary.results.items() if r.status == "failed"}
    assert list(failed) == ["toy_die/alpha/F200W"] and "worker process died" in failed["toy_die/alpha/F200W"]
    assert all(r.status == "ran" for t, r in summary.results.items() if t != "toy_die/alpha/F200W")
    again = _engine(toy, reg, workers=2).run()
    assert again.ok and [t for t, r in again.results.items() if r.status == "ran"] == ["toy_die/alpha/F200W"]


def test_dask_caps_a_memory_hint_at_what_the_workers_offer():
    """A task asking for more MEMORY than any worker declares would wait forever: its hint is
    capped at the largest worker's (with a warning) and it runs."""
    from processing.executors import DaskExecutor

    with DaskExecutor(1, {}, memory_gb_per_worker=1.0) as ex:
        assert ex.use_resources and ex.max_memory == 2**30
        fut = ex.submit(len, {"task": "t", "key": "k" * 16}, memory_gb=5.0)
        assert fut.result(timeout=120) == 2


def test_processing_never_imports_release():
    """release/ depends on processing/, never the reverse (type-checking imports aside)."""
    offenders = []
    for path in sorted((REPO / "processing").rglob("*.py")):
        tree = ast.parse(path.read_text())
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "release":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "release" for a in node.names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_a_stage_that_refines_an_output_in_place_is_read_by_every_reader(toy):
    """A refiner (like destriping the rate files before image2) is one declaration: the
    readers of the refined output read it instead, for the refiner's instruments only."""
    (toy["mods"] / "toy_fix.py").write_text(
        textwrap.dedent("""
        from pathlib import Path
        from astropy.io import fits

        def run(inputs, outdir, params, context):
            out = Path(outdir) / Path(inputs["data"][0]).name
            fits.PrimaryHDU(fits.getdata(inputs["data"][0]) - 1.0).writeto(out)
            return [out]
    """)
    )
    from pydantic import BaseModel

    class NoParams(BaseModel):
        pass

    fix = Stage(
        "toy_fix",
        "exposure",
        (Input("data", "same", "toy_a", "_toya.fits"),),
        ("_toya.fits",),
        "toy_fix:run",
        ModelParameters(NoParams),
        instruments=("nircam",),
        refines=("toy_a", "_toya.fits"),
        memory_gb=0.1,
    )
    reg = _registry([fix])
    assert reg.order.index("toy_fix") < reg.order.index("toy_b") and reg.order.index("toy_fix") < reg.order.index(
        "toy_visit"
    )
    graph = build_graph(toy["lm"], registry=reg)
    assert {r["task"].split("/")[0] for r in graph.tasks["toy_b/alpha/F200W"].inputs["members"]} == {"toy_fix"}
    assert {r["task"].split("/")[0] for r in graph.tasks["toy_b/alpha/F770W"].inputs["members"]} == {"toy_a"}
    assert graph.tasks["toy_visit/jw09001alphaf200w001"].inputs["rate"][0]["task"] == "toy_fix/jw09001alphaf200w001"
    assert graph.tasks["toy_fix/jw09001alphaf200w001"].inputs["data"][0]["task"] == "toy_a/jw09001alphaf200w001"
    eng, _ = _run_all(toy, reg, workers=2)
    entries, _ = eng.product_index()
    by = {(e.target, e.band): fits.getdata(e.path) for e in entries}
    # gain 2 then -1 for NIRCam (refined), gain 3 for MIRI (not), plus the catalogue's 0.5
    assert np.allclose(by[("alpha", "F200W")], (2 * 1 - 1 + 2 * 2 - 1) / 2 + 0.5)
    assert np.allclose(by[("alpha", "F770W")], (3 * 5 + 3 * 6) / 2 + 0.5)
    with pytest.raises(RegistryError, match="does not read it"):
        Registry(
            [
                reg["toy_a"],
                Stage(
                    "bad",
                    "exposure",
                    (),
                    ("_toya.fits",),
                    "m:f",
                    fix.parameters,
                    refines=("toy_a", "_toya.fits"),
                ),
            ]
        )


def test_a_wider_stage_refines_every_member_exposure_and_each_reader_gets_its_own_file(toy):
    """Multi-tile work (level matching, multi-tile destriping) reads every exposure of a
    target and band and writes each one back: declared as a target_band refiner of an
    exposure output, each exposure reader gets that exposure's file from the wide task."""
    (toy["mods"] / "toy_wide.py").write_text(
        textwrap.dedent("""
        from pathlib import Path
        import numpy as np
        from astropy.io import fits

        def run(inputs, outdir, params, context):
            data = [fits.getdata(p) for p in inputs["members"]]
            mean = np.mean(data, axis=0)
            out = []
            for p, d in zip(inputs["members"], data):
                if params.get("forget_one") and out:
                    break
                out.append(Path(outdir) / Path(p).name)
                fits.PrimaryHDU(d - mean).writeto(out[-1])
            return out
    """)
    )
    from pydantic import BaseModel

    class WideParams(BaseModel):
        forget_one: bool = False

    wide = Stage(
        "toy_wide",
        "target_band",
        (Input("members", "members", "toy_a", "_toya.fits"),),
        ("_toya.fits",),
        "toy_wide:run",
        ModelParameters(WideParams),
        instruments=("nircam",),
        refines=("toy_a", "_toya.fits"),
        memory_gb=0.1,
    )
    reg = _registry([wide])
    assert reg.widens("toy_wide") and not reg.widens("toy_a")
    graph = build_graph(toy["lm"], registry=reg)
    assert graph.tasks["toy_visit/jw09001alphaf200w001"].inputs["rate"] == [
        {"task": "toy_wide/alpha/F200W", "suffix": "_toya.fits", "member": "jw09001alphaf200w001"}
    ]
    assert graph.tasks["toy_wide/alpha/F200W"].inputs["members"][0]["task"] == "toy_a/jw09001alphaf200w001"
    assert {r["task"] for r in graph.tasks["toy_b/alpha/F770W"].inputs["members"]} == {
        "toy_a/jw09001alphaf770w001",
        "toy_a/jw09001alphaf770w002",
    }  # MIRI is not refined
    eng, _ = _run_all(toy, reg, workers=2)
    entries, _ = eng.product_index()
    by = {(e.target, e.band): fits.getdata(e.path) for e in entries}
    assert np.allclose(by[("alpha", "F200W")], 0.5)  # members minus their mean, averaged: 0, plus the catalogue's 0.5
    visit = eng.cache.entry(eng.task_keys()["toy_visit/jw09001alphaf200w002"])
    assert np.allclose(
        fits.getdata(visit / "jw09001alphaf200w002_toyv.fits"), 1.0
    )  # one file per reader, one reference
    # a wide refiner that leaves a member out fails naming the file, and nothing downstream runs on half the data
    graph = build_graph(toy["lm"], registry=reg)
    for t in graph.tasks.values():
        if t.stage == "toy_wide":
            t.params = {"forget_one": True}
    summary = Engine(toy["lm"], graph, toy["root"] / "work2").run()
    failed = {t: r.error for t, r in summary.results.items() if r.status == "failed"}
    assert failed and all("did not write jw09001" in e and "one refined file per member" in e for e in failed.values())
    assert summary.results["toy_b/alpha/F200W"].status == "skipped"


def test_a_stage_with_variants_writes_and_provides_one_product_per_manifest_value(toy):
    """Outputs and products that repeat per manifest value (e.g. one PSF-matched mosaic per
    resolution): declared once with {variant}, expanded from the manifest when the graph is
    built, checked by the executor, one product each in the index; none asked for: no task."""
    (toy["mods"] / "toy_s.py").write_text(
        textwrap.dedent("""
        from pathlib import Path
        from astropy.io import fits

        def variants(manifest):
            return {f"x{int(f * 100)}": f for f in manifest.products.convolved_fwhm_arcsec}

        def run(inputs, outdir, params, context):
            data = fits.getdata(inputs["mosaic"][0])
            out = []
            for name, value in context["variants"].items():
                out.append(Path(outdir) / f"{context['product']}_{name}.fits")
                fits.PrimaryHDU(data * value).writeto(out[-1])
            return out
    """)
    )
    sys.modules.pop("toy_s", None)
    from pydantic import BaseModel

    class NoParams(BaseModel):
        pass

    s = Stage(
        "toy_s",
        "target_band",
        (Input("mosaic", "same", "toy_b", "_toyb.fits"),),
        ("_{variant}.fits",),
        "toy_s:run",
        ModelParameters(NoParams),
        products=(Product("img-{variant}", "_{variant}.fits"),),
        variants="toy_s:variants",
        memory_gb=0.1,
    )
    with pytest.raises(RegistryError, match="names {variant} in _{variant}.fits but declares no variants"):
        _registry(
            [
                Stage(
                    "toy_bad",
                    "target_band",
                    (Input("mosaic", "same", "toy_b", "_toyb.fits"),),
                    ("_{variant}.fits",),
                    "toy_s:run",
                    ModelParameters(NoParams),
                )
            ]
        )
    reg = _registry([s])
    eng, summary = _run_all(toy, reg, workers=1)
    task = eng.graph.tasks["toy_s/alpha/F200W"]
    assert task.context["variants"] == {"x85": 0.85, "x90": 0.9, "x100": 1.0}
    assert sorted(summary.results["toy_s/alpha/F200W"].record["outputs"]) == [
        "alpha_f200w_x100.fits",
        "alpha_f200w_x85.fits",
        "alpha_f200w_x90.fits",
    ]
    entries, missing = eng.product_index()
    assert not missing
    got = sorted((e.product, e.kind) for e in entries if e.target == "alpha" and e.band == "F200W")
    assert got == [
        ("img", "img"),
        ("img-x100", "img-{variant}"),
        ("img-x85", "img-{variant}"),
        ("img-x90", "img-{variant}"),
    ]
    img = fits.getdata(next(e.path for e in entries if e.product == "img" and (e.target, e.band) == ("alpha", "F200W")))
    x90 = fits.getdata(
        next(e.path for e in entries if e.product == "img-x90" and (e.target, e.band) == ("alpha", "F200W"))
    )
    assert np.allclose(x90, 0.9 * img)
    # a manifest asking for no variant: the stage has no task
    none = toy["lm"].path.with_name("none.toml")
    none.write_text(toy["lm"].path.read_text() + "\n[products]\nconvolved_fwhm_arcsec = []\n")
    assert not [t for t in build_graph(load_manifest(none), registry=reg).tasks if t.startswith("toy_s/")]
