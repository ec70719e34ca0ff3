"""Shared fixtures. Heavy fixtures (the synthetic program, pipeline runs) are session-scoped."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"


# --------------------------------------------------------------------------------------------
# Two tiers, chosen by what a test uses (not by hand)
# --------------------------------------------------------------------------------------------

#: fixtures that write a synthetic program, or run the jwst pipeline or the engine on one. A
#: test that requests one, directly or through other fixtures, is marked ``slow`` at collection
#: (the end-to-end tier of `make test`); every other test is the fast tier of `make check`.
#: Declare such a fixture with :func:`pipeline_fixture` instead of ``pytest.fixture``.
PIPELINE_FIXTURES: set[str] = set()


def pipeline_fixture(fn=None, **kwargs):
    """``pytest.fixture`` for a fixture that runs the pipeline: the tests using it are slow."""

    def declare(f):
        PIPELINE_FIXTURES.add(kwargs.get("name", f.__name__))
        return pytest.fixture(**kwargs)(f)

    return declare(fn) if fn is not None else declare


def uses_pipeline(item) -> bool:
    """Whether a collected test requests a pipeline fixture (``fixturenames`` is the closure:
    the fixtures of its fixtures too)."""
    return bool(set(getattr(item, "fixturenames", ())) & PIPELINE_FIXTURES)


def pytest_itemcollected(item):
    if uses_pipeline(item):
        item.add_marker(pytest.mark.slow)


@pytest.hookimpl(trylast=True)  # after `-m` deselected what is not run
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist's worksteal scheduling (`make test`) the first half of the list starts
    on one worker and the second half on the other: the tests that do not need the shared engine
    run start the second half, so that worker has work of its own while the first builds it."""
    import os

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    engine = [i for i in items if "engine_run" in i.fixturenames]
    other = [i for i in items if "engine_run" not in i.fixturenames]
    half = min(len(items) // 2, len(engine))
    items[:] = engine[:half] + other + engine[half:]


class PipelineInFastTier(RuntimeError):
    """A fast-tier test ran what only the slow tier may run."""


def pytest_configure(config):
    """The tests' own user cache (header facts, processing/inputs.py HeaderFacts): a test run
    never reads or writes the user's ``~/.cache/hlsp`` (subprocesses inherit it)."""
    import os
    import tempfile

    if "HLSP_CACHE_HOME" not in os.environ:
        os.environ["HLSP_CACHE_HOME"] = tempfile.mkdtemp(prefix="hlsp-test-user-cache-")


@pytest.fixture(autouse=True)
def _fast_tier_runs_no_pipeline(request, monkeypatch):
    """In the fast tier, running a jwst step or writing a synthetic program fails the test at
    once, naming what to do: so a test that does it without a pipeline fixture cannot slip
    into `make check` unnoticed (its time would, and nothing else would tell)."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    import stpipe.step

    from processing.simulate import generate

    def refuse(what):
        def run(*args, **kwargs):
            raise PipelineInFastTier(
                f"{request.node.nodeid} {what} but requests no pipeline fixture: run it from a fixture "
                "declared with tests.conftest.pipeline_fixture (it then belongs to the slow tier)"
            )

        return run

    monkeypatch.setattr(stpipe.step.Step, "run", refuse("runs a jwst step"))
    monkeypatch.setattr(generate, "simulate_program", refuse("writes a synthetic program"))
    yield


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


# --------------------------------------------------------------------------------------------
# Session fixtures built once per test run, shared by every pytest-xdist worker
# --------------------------------------------------------------------------------------------


def once(tmp_path_factory, name: str, build):
    """``build(folder)`` run once per test run; its (picklable) result shared by every worker.

    Without xdist it runs in a new temporary folder. Under xdist the first worker to ask builds
    in ``<run's temporary root>/shared/<name>`` under a lock while the others wait, then each
    reads the result (the pattern pytest-xdist documents for session fixtures). What a shared
    fixture made is read by tests, never written: a test that writes (a run, a package, a
    changed file) does it in its own folder, on a linked copy if it needs the fixture's files
    (:func:`linked_copy`)."""
    import fcntl
    import os
    import pickle
    import shutil

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / "shared"
    root.mkdir(exist_ok=True)
    with open(root / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the worker dies)
        done = root / f"{name}.pickle"
        if done.exists():
            return pickle.loads(done.read_bytes())
        folder = root / name
        if folder.exists():  # a worker that failed to build it before
            shutil.rmtree(folder)
        folder.mkdir()
        result = build(folder)
        done.write_bytes(pickle.dumps(result))
        return result


def product_file(folder: Path, name: str) -> Path:
    """A product linked under a work folder's ``products/<target>/<band>/``: as the stage wrote
    it (``--keep all``) or as a kept cache entry stores it (``name.gz``, the default retention)."""
    p, gz = folder / name, folder / (name + ".gz")
    return gz if not p.exists() and gz.exists() else p


def linked_copy(src: Path, dest: Path) -> Path:
    """A copy of a shared fixture's folder whose files are hard links (links stay links): free,
    and a test may then write in it. Files must be replaced, never edited in place (the cache and
    the releases never edit a file in place either)."""
    import os
    import shutil

    # a lock file is never shared: flock locks the inode, and a link would lock both folders
    shutil.copytree(src, dest, symlinks=True, copy_function=os.link, ignore=shutil.ignore_patterns(".hlsp.lock"))
    return dest


# --------------------------------------------------------------------------------------------
# The synthetic program, generated once per test run (small: two bands each)
# --------------------------------------------------------------------------------------------


@pipeline_fixture(scope="session")
def clean_default(tmp_path_factory) -> tuple[Path, dict]:
    """A program with no instrumental effect at all (no noise, backgrounds, stripes, CRs,
    pointing errors), one band (F770W; `make bench` checks the others), and jwst's defaults
    (detector1, image2, image3) on its synth1 with skymatch off: (program, result).

    skymatch is the one default that estimates a background; with emission filling the field
    it subtracts real emission (measured here: about 0.7 MJy/sr at F300M, 0.4 at F770W), which
    is the paper's point (section 3.5), not a property of the data.
    """
    from tests.benchmarks.default_pipeline import clean_defaults

    return once(tmp_path_factory, "clean", lambda folder: clean_defaults(folder, bands=("F770W",)))


@pipeline_fixture(scope="session")
def effects_program(tmp_path_factory) -> Path:
    """The demo program's effects, on two bands (NIRCam F200W, MIRI F770W)."""
    from processing.simulate.generate import simulate_program

    def build(folder: Path) -> Path:
        simulate_program(folder / "program", size="demo", seed=1, bands=["F200W", "F770W"])
        return folder / "program"

    return once(tmp_path_factory, "effects", build)


@pipeline_fixture(scope="session")
def effects_default(effects_program, tmp_path_factory) -> dict:
    from processing.simulate.default_pipeline import run_default_pipeline

    def build(folder: Path) -> dict:
        return {**run_default_pipeline(effects_program, folder, targets=["synth1"]), "workdir": folder}

    return once(tmp_path_factory, "effects-default", build)


#: the wide-field images of the synthetic program, in the paper's order (survey, beam FWHM", the
#: bands it anchors directly: none for the reference band's images)
ANCHORING_IMAGES = {
    "nircam": (("irac1", 1.7, ()), ("wise1", 6.1, ())),
    "miri": (("irac4", 2.0, ()), ("wise3", 6.5, ()), ("mips24", 6.0, ("F2100W",))),
}


def anchoring_images(program: Path, target: str, bands=None) -> str:
    """The manifest tables naming a target's wide-field images for background anchoring (an
    image anchoring a band directly only where ``bands``, the program's, has it)."""
    return "".join(
        f'[[targets.{target}.anchoring.{inst}]]\nsurvey = "{s}"\nfile = '
        f'"{program / "external" / f"{target}_{s}.fits"}"\n'
        f"fwhm_arcsec = {fwhm}\n" + (f"bands = {json.dumps(list(direct))}\n" if direct else "")
        for inst, images in ANCHORING_IMAGES.items()
        for s, fwhm, direct in images
        if not direct or (bands is not None and set(direct) <= set(bands))
    )


def write_manifest(
    path: Path, program: Path, extra: str = "", pins_jwst: str = "3.0.0", borrow: str = "borrowed"
) -> Path:
    """A release manifest for a synthetic program (bands taken from the program)."""
    import json

    bands = json.loads((program / "program.json").read_text())["bands"]
    # the test programs' NIRCam mosaics cannot be anchored (docs/anchoring.md): released at
    # their calibrated level, accepted knowingly (as the demo's manifests do)
    accept = ", ".join(f"{b} = 30.0" for b in bands if b in ("F200W", "F300M"))
    products = f"max_level_uncertainty_by_band = {{ {accept} }}\n" if accept else ""
    if "[products]\n" in extra:
        extra = extra.replace("[products]\n", "[products]\n" + products, 1)
    elif products:
        extra = extra + "\n[products]\n" + products
    path.write_text(
        f"""
schema_version = 1
[release]
project = "synth-jwst"
title = "test release"
version = "1.0.0"
doi = "10.17909/synthetic-test"
lead = "T. Est"
pi = "T. Est"
[release.contact]
name = "T. Est"
email = "test@example.org"
[pins]
jwst = "{pins_jwst}"
crds_context = "jwst_9001.pmap"
crds_path = "{program / "crds"}"
crds_mode = "local"
[program]
proposal_ids = [9001]
instruments = ["nircam", "miri"]
bands = {json.dumps(bands)}
[program.data]
source = "synthetic"
path = "{program}"
[targets.synth1]
ra = 150.10
dec = 2.20
astrometry_catalog = "{program / "external" / "synth1_refcat.ecsv"}"
{anchoring_images(program, "synth1", bands)}
[targets.synth2]
ra = 150.60
dec = 2.45
astrometry_catalog = "{program / "external" / "synth2_refcat.ecsv"}"
{anchoring_images(program, "synth2", bands)}
[targets.synth2.miri_background]
source = "{borrow}"
{'borrow_from = "synth1"' if borrow != "own" else ""}
"""
        + extra
    )
    return path


def hlsp(
    *args: str, check_code: int | None = None, env: dict | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess:
    """Run the hlsp command as a user would (a separate process).

    ``env``: the environment (default: this one, wide tables); ``prefix``: a command to run it
    under (e.g. a read-only mount)."""
    import os
    import sys

    env = env if env is not None else {**os.environ, "COLUMNS": "400"}  # rich wraps tables to the terminal width
    cmd = (prefix or []) + [sys.executable, "-m", "release.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if check_code is not None:
        assert proc.returncode == check_code, proc.stdout + proc.stderr
    return proc


@pipeline_fixture(scope="session")
def engine_run(effects_program, tmp_path_factory) -> dict:
    """`hlsp run` on the effects program: the first, uncached run, shared by the engine tests
    (read-only: a test that runs, plans or packages with it works on a :func:`linked_copy`)."""
    import time

    def build(root: Path) -> dict:
        manifest = write_manifest(root / "release.toml", effects_program)
        t0 = time.time()
        # every entry kept whole: the tests measure the intermediates against the truth
        proc = hlsp("run", str(manifest), "--workdir", str(root / "work"), "--keep", "all", check_code=0)
        return {
            "root": root,
            "manifest": manifest,
            "workdir": root / "work",
            "cache": root / "work" / "cache",
            "elapsed_s": time.time() - t0,
            "stdout": proc.stdout,
            "stderr": proc.stderr,
        }

    return once(tmp_path_factory, "engine", build)


@pipeline_fixture(scope="session")
def demo_release(engine_run, tmp_path_factory) -> Path:
    """The engine run's mosaics packaged as a release (validated clean in test_validate). The
    packaging runs on a linked copy of the work folder (it writes its log there)."""

    def build(root: Path) -> Path:
        work = linked_copy(engine_run["workdir"], root / "work")
        hlsp(
            "package",
            str(engine_run["manifest"]),
            "--workdir",
            str(work),
            "--releases",
            str(root / "releases"),
            check_code=0,
        )
        return root / "releases" / "synth-jwst" / "v1p0"

    return once(tmp_path_factory, "releases", build)


#: the one parameter :func:`second_release` changes (synth2 F770W's PSF-matched coverage)
SECOND_RELEASE_CHANGE = {"band": {"F770W": {"psf_matching": {"min_coverage": 0.9}}}}


@pipeline_fixture(scope="session")
def second_release(engine_run, demo_release, tmp_path_factory) -> dict:
    """A team's release folder with two versions: release 1.0.0 (a linked copy of
    :func:`demo_release`) and 1.1.0, the engine run's manifest with one parameter of synth2
    changed (:data:`SECOND_RELEASE_CHANGE`), run on a linked copy of the engine run's cache and
    packaged beside it. Both manifests sit in one folder, ``synth`` under ``manifests`` (one per
    release, as a team keeps them). Read-only, as engine_run."""
    import shutil
    import tomllib

    import tomli_w

    def build(root: Path) -> dict:
        manifests = root / "manifests" / "synth"
        manifests.mkdir(parents=True)
        first = manifests / "release.toml"
        shutil.copy(engine_run["manifest"], first)
        releases = root / "releases"
        previous = linked_copy(demo_release, releases / "synth-jwst" / "v1p0")
        data = tomllib.loads(first.read_text())
        data["release"].update(version="1.1.0", previous="1.0.0")
        data["targets"]["synth2"]["parameters"] = SECOND_RELEASE_CHANGE
        data["comparisons"] = {"previous_release": str(previous)}
        second = manifests / "release-1.1.toml"
        second.write_text(tomli_w.dumps(data))
        work = root / "work"
        linked_copy(engine_run["cache"], work / "cache")
        proc = hlsp("run", str(second), "--workdir", str(work), check_code=0)
        hlsp("package", str(second), "--workdir", str(work), "--releases", str(releases), check_code=0)
        return {
            "manifest": second,
            "first": first,
            "workdir": work,
            "releases": releases,
            "release": releases / "synth-jwst" / "v1p1",
            "previous": previous,
            "run_stdout": proc.stdout,
        }

    return once(tmp_path_factory, "second-release", build)


#: the one parameter :func:`changed_run` changes (synth2's lv3 outlier detection)
CHANGED_SYNTH2 = '\n[targets.synth2.parameters.default.lv3.outlier_detection]\nsnr = "4.0 3.0"\n'


@pipeline_fixture(scope="session")
def changed_run(engine_run, tmp_path_factory) -> dict:
    """The engine run's manifest with one parameter of synth2 changed (:data:`CHANGED_SYNTH2`),
    planned and run by the engine on a linked copy of the engine run's cache, in a work folder
    of its own: what the plan said would run, what ran, and where (read-only, as engine_run)."""
    from processing.executor import Engine
    from processing.pipeline import build_graph
    from release.manifest import load_manifest

    def build(root: Path) -> dict:
        lm0 = load_manifest(engine_run["manifest"])
        manifest = write_manifest(
            root / "changed.toml", lm0.resolve_path(lm0.manifest.program.data.path), extra=CHANGED_SYNTH2
        )
        lm = load_manifest(manifest)
        cache = linked_copy(engine_run["cache"], root / "cache")
        engine = Engine(lm, build_graph(lm), root / "work", cache_dir=cache, keep="all")
        planned = engine.plan()
        summary = engine.run()
        return {
            "manifest": manifest,
            "workdir": root / "work",
            "cache": cache,
            "planned": dict(planned),
            "ok": summary.ok,
            "ran": sorted(t for t, r in summary.results.items() if r.status == "ran"),
        }

    return once(tmp_path_factory, "changed", build)


#: the stages a kill-and-resume test runs for itself (everything before them comes from the
#: shared engine run's cache: what is tested is the kill and the resume, not the whole graph)
LATE_STAGES = ("lv3", "astrometry", "anchoring", "psf_matching")


def seed_cache(src: Path, dest: Path, skip_stages: tuple[str, ...] = LATE_STAGES) -> int:
    """Hard-link ``src``'s cache entries into the cache ``dest``, except those of
    ``skip_stages``; return how many. Entries are never modified in place, so sharing their
    files is safe."""
    import json
    import os
    import shutil

    n = 0
    for entry in sorted((Path(src) / "objects").glob("*/*")):
        if json.loads((entry / "task.json").read_text())["stage"] in skip_stages:
            continue
        shutil.copytree(entry, Path(dest) / "objects" / entry.parent.name / entry.name, copy_function=os.link)
        n += 1
    return n
