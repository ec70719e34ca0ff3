"""The engine's bookkeeping at survey scale (header-only programs, processing/simulate/survey.py):
the graph and every key of a 2,000-exposure program in seconds, header facts read once, and
no step that grows with the square of the number of exposures. `make bench-survey` measures
1,000 to 12,880 exposures (docs/performance.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from processing import inputs as I
from processing.simulate.survey import FILES_PER_POINTING, write_survey_headers


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> dict:
    return write_survey_headers(tmp_path_factory.mktemp("survey") / "program", 2000)


def test_the_header_only_program_is_cosmos_web_shaped(survey):
    from astropy.io import fits

    assert survey["exposures"] == 2000 and survey["pointings"] == -(-2000 // FILES_PER_POINTING)
    files = sorted((survey["manifest"].parent / "uncal").glob("*_uncal.fits"))
    assert len(files) == 2000
    h = fits.getheader(files[0])
    assert (h["INSTRUME"], h["TARGPROP"], h["PROGRAM"], h["HDRONLY"]) == ("NIRCAM", "COSMOS", "01727", True)
    detectors = {fits.getheader(f)["DETECTOR"] for f in files[:80]}
    assert detectors == {"NRCA1", "NRCA2", "NRCA3", "NRCA4", "NRCB1", "NRCB2", "NRCB3", "NRCB4", "NRCALONG", "NRCBLONG"}


def test_a_2000_exposure_program_is_planned_in_seconds(survey, tmp_path, monkeypatch):
    """The graph and every task's key (what `hlsp plan` computes with a populated cache): under
    5 s for 2,000 exposures (about 1 s measured), each wide task reading its members once."""
    from processing.executor import Engine
    from processing.pipeline import build_graph
    from release.manifest import load_manifest

    monkeypatch.setenv("HLSP_CACHE_HOME", str(tmp_path / "user-cache"))
    t0 = time.perf_counter()
    lm = load_manifest(survey["manifest"])
    graph = build_graph(lm)
    keys = Engine(lm, graph, tmp_path / "work", allow_version_mismatch=True, read_only=True).task_keys()
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, f"{elapsed:.1f} s"
    assert len(keys) == len(graph.tasks) == 3 * 2000 + 1 + 5 * 4  # lv1, destripe, lv2; relative astrometry; 5 wide
    per_band = {t.band: len(t.inputs["cal"]) for t in graph.tasks.values() if t.stage == "level_match"}
    science = {b: len(tb.science) for (_, b), tb in graph.inputs.items()}
    assert per_band == science and sum(science.values()) == 2000
    # the relative astrometry reads every exposure of the instrument once
    assert len(graph.tasks["relative_astrometry/cosmos/nircam"].deps) == 2000
    assert all(len(t.deps) == len(set(t.deps)) for t in graph.tasks.values())


def test_header_facts_are_read_once_and_again_when_a_file_changes(survey, tmp_path, monkeypatch):
    monkeypatch.setenv("HLSP_CACHE_HOME", str(tmp_path / "user-cache"))
    data = survey["manifest"].parent
    first = I.scan_exposures(data)
    read = []
    real = I._facts_of
    monkeypatch.setattr(I, "_facts_of", lambda p: read.append(p) or real(p))
    assert I.scan_exposures(data) == first and read == []  # every header from the cache
    touched = Path(first[0].path)
    touched.write_bytes(touched.read_bytes())  # same bytes, a new modification time
    again = I.scan_exposures(data)
    assert again == first and read == [touched]


def test_an_unwritable_user_cache_only_costs_time(survey, tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("HLSP_CACHE_HOME", str(blocked))
    assert len(I.scan_exposures(survey["manifest"].parent)) == 2000
