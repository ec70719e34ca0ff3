"""The two test tiers are chosen by what a test uses (tests/conftest.py): `make check` runs no
pipeline, `make test` runs everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, PipelineInFastTier


def _collect(tmp_path, *args: str) -> dict:
    out = tmp_path / "collected.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "tests.collect_probe", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HLSP_COLLECT_PROBE": str(out)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_the_fast_tier_requests_no_pipeline_fixture(tmp_path):
    fast = _collect(tmp_path, "-m", "not slow")
    pipeline = set(fast["pipeline_fixtures"])
    # the fixtures that simulate a program or run jwst / the engine, wherever they are declared
    declared = {"effects_program", "clean_default", "effects_default", "engine_run", "demo_release", "changed_run"}
    assert declared <= pipeline
    assert {"crds_cache", "calibrated"} <= pipeline  # declared in a test module
    offenders = {t: sorted(set(v["fixtures"]) & pipeline) for t, v in fast["tests"].items()}
    assert not {t: f for t, f in offenders.items() if f}, "fast-tier tests that request a pipeline fixture"
    # ... and the tiers are not empty by accident: the fast tier holds this test, the slow one
    # the end-to-end tests (only through their fixtures: no module marks itself)
    assert "tests/test_tiers.py::test_the_fast_tier_requests_no_pipeline_fixture" in fast["tests"]
    slow = _collect(tmp_path, "-m", "slow")["tests"]
    for test in (
        "tests/processing/test_engine.py::test_first_run_makes_every_mosaic_with_provenance",
        "tests/release/test_validate.py::test_demo_release_validates_clean",
        "tests/processing/test_astrometry.py::test_relative_shifts_recover_the_guide_star_errors",  # via `truth`
    ):
        assert test in slow and test not in fast["tests"], test
    assert all("slow" in v["markers"] for v in slow.values())
    assert len(fast["tests"]) > 150 and len(slow) > 50, (len(fast["tests"]), len(slow))


def test_a_fast_test_that_runs_jwst_or_simulates_a_program_fails_at_once(tmp_path):
    import stpipe.step

    from processing.simulate import generate

    with pytest.raises(PipelineInFastTier, match="runs a jwst step but requests no pipeline fixture"):
        stpipe.step.Step.run(None)
    with pytest.raises(PipelineInFastTier, match="writes a synthetic program"):
        generate.simulate_program(tmp_path / "program")
    assert not (tmp_path / "program").exists()
