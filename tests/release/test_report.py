"""The HTML release report (release/report.py) opened in headless Chromium: every image
loads, every table is there; a screenshot is kept in the test's folder."""

from __future__ import annotations

import os
import shutil

import pytest

from release.report import chromium_executable, render_in_chromium, write_report


def test_the_report_renders_in_chromium_with_no_broken_image(engine_run, demo_release, tmp_path):
    from release.manifest import load_manifest

    if chromium_executable() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed: under CI the Makefile installs it (make sysdeps, as root)")
        pytest.skip("chromium is not installed (Debian package 'chromium'; make sysdeps installs it as root)")
    lm = load_manifest(engine_run["manifest"])
    page = write_report(lm, demo_release, engine_run["workdir"], tmp_path / "report", previous=demo_release)
    shot = tmp_path / "report.png"
    result = render_in_chromium(page, shot)
    assert result["broken"] == 0, result["dom"][:2000]
    # 4 previews, the QA figures of astrometry, anchoring and PSF matching per band, relative
    # astrometry per instrument, 4 comparison figures
    assert result["images"] >= 4 + 3 * 4 + 4, result["images"]
    dom = result["dom"]
    for table in ("anchoring", "psf-matching"):
        assert dom.count(f'data-table="{table}"') == 2  # one per target
    assert 'id="comparison-numbers-previous"' in dom and dom.count("<tr>") > 10
    assert shot.stat().st_size > 10_000
    # the report folder is self-contained: every image it names is inside it
    assert not [p for p in (tmp_path / "report").rglob("*") if p.is_symlink()]
    copy = tmp_path / "moved"
    shutil.copytree(tmp_path / "report", copy)
    assert render_in_chromium(copy / "index.html")["broken"] == 0
