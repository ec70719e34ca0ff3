"""Shared fixtures. Heavy fixtures (the synthetic program, pipeline runs) are session-scoped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


# --------------------------------------------------------------------------------------------
# The synthetic program, generated once per session (small: two bands each)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clean_program(tmp_path_factory) -> Path:
    """A program with no instrumental effect at all (no noise, backgrounds, stripes, CRs, pointing errors)."""
    from processing.simulate.exposures import Effects
    from processing.simulate.generate import simulate_program

    out = tmp_path_factory.mktemp("clean") / "program"
    simulate_program(out, size="demo", seed=3, bands=["F300M", "F770W"], effects=Effects.none())
    return out


@pytest.fixture(scope="session")
def clean_default(clean_program, tmp_path_factory) -> dict:
    """jwst defaults (detector1, image2, image3) on the clean program's synth1, with skymatch off.

    skymatch is the one default that estimates a background; with emission filling the field
    it subtracts real emission (measured here: about 0.7 MJy/sr at F300M, 0.4 at F770W), which
    is the paper's point (section 3.5), not a property of the data.
    """
    from processing.simulate.default_pipeline import LV3_DEFAULT_PARAMS, run_default_pipeline

    params = {**LV3_DEFAULT_PARAMS, "skymatch": {"skip": True}}
    return run_default_pipeline(
        clean_program, tmp_path_factory.mktemp("clean-default"), targets=["synth1"], lv3_params=params
    )


@pytest.fixture(scope="session")
def effects_program(tmp_path_factory) -> Path:
    """The demo program's effects, on two bands (NIRCam F200W, MIRI F770W)."""
    from processing.simulate.generate import simulate_program

    out = tmp_path_factory.mktemp("effects") / "program"
    simulate_program(out, size="demo", seed=1, bands=["F200W", "F770W"])
    return out


@pytest.fixture(scope="session")
def effects_default(effects_program, tmp_path_factory) -> dict:
    from processing.simulate.default_pipeline import run_default_pipeline

    work = tmp_path_factory.mktemp("effects-default")
    result = run_default_pipeline(effects_program, work, targets=["synth1"])
    result["workdir"] = work
    return result


#: the wide-field images of the synthetic program, in the paper's order (survey, beam FWHM")
ANCHORING_IMAGES = {"nircam": (("irac1", 1.7), ("wise1", 6.1)), "miri": (("irac4", 2.0), ("wise3", 6.5))}


def anchoring_images(program: Path, target: str) -> str:
    """The manifest tables naming a target's wide-field images for background anchoring."""
    return "".join(
        f'[[targets.{target}.anchoring.{inst}]]\nsurvey = "{s}"\nfile = '
        f'"{program / "external" / f"{target}_{s}.fits"}"\n'
        f"fwhm_arcsec = {fwhm}\n"
        for inst, images in ANCHORING_IMAGES.items()
        for s, fwhm in images
    )


def write_manifest(
    path: Path, program: Path, extra: str = "", pins_jwst: str = "3.0.0", borrow: str = "borrowed"
) -> Path:
    """A release manifest for a synthetic program (bands taken from the program)."""
    import json

    bands = json.loads((program / "program.json").read_text())["bands"]
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
{anchoring_images(program, "synth1")}
[targets.synth2]
ra = 150.60
dec = 2.45
astrometry_catalog = "{program / "external" / "synth2_refcat.ecsv"}"
{anchoring_images(program, "synth2")}
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


@pytest.fixture(scope="session")
def engine_run(effects_program, tmp_path_factory) -> dict:
    """`hlsp run` on the effects program: the first, uncached run, shared by the engine tests."""
    import time

    root = tmp_path_factory.mktemp("engine")
    manifest = write_manifest(root / "release.toml", effects_program)
    t0 = time.time()
    proc = hlsp("run", str(manifest), "--workdir", str(root / "work"), check_code=0)
    return {
        "root": root,
        "manifest": manifest,
        "workdir": root / "work",
        "cache": root / "work" / "cache",
        "elapsed_s": time.time() - t0,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


@pytest.fixture(scope="session")
def demo_release(engine_run, tmp_path_factory) -> Path:
    """The engine run's mosaics packaged as a release (validated clean in test_validate)."""
    root = tmp_path_factory.mktemp("releases")
    hlsp(
        "package",
        str(engine_run["manifest"]),
        "--workdir",
        str(engine_run["workdir"]),
        "--releases",
        str(root),
        check_code=0,
    )
    return root / "synth-jwst" / "v1p0"


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
