"""A release packaged by an earlier version keeps validating: its manifest's identity
(HLSPMANI) is what the release team wrote, so a setting added to the schema later, with a
default, changes nothing (tests/data/tiny-release, written by tests/release/tiny_release.py)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from processing.fileio import make_world_readable
from release import manifest as M
from release.validate import fitsverify_executable, validate_release

STORED = Path(__file__).resolve().parent.parent / "data" / "tiny-release" / "v1p0"


@pytest.fixture
def stored(tmp_path) -> Path:
    """The stored release, copied (git keeps no modes: a release is world-readable)."""
    rel = tmp_path / "v1p0"
    shutil.copytree(STORED, rel)
    make_world_readable(rel)
    return rel


def _failures(rel: Path) -> list[str]:
    report = validate_release(rel, use_fitsverify=fitsverify_executable() is not None)
    return [f"{f.file}: {f.check}: {f.message}" for f in report.failures]


def test_the_stored_release_validates(stored):
    assert _failures(stored) == []
    assert len(list(stored.rglob("*.fits"))) == 2


def test_it_keeps_validating_after_a_setting_with_a_default_is_added(stored, monkeypatch):
    from pydantic import Field, create_model

    Products = create_model("Products", __base__=M.Products, ratio_maps=(bool, Field(False)))
    Release = create_model("Release", __base__=M.Release, embargo_days=(int, Field(0)))
    Later = create_model(
        "Later",
        __base__=M.Manifest,
        provenance_level=(int, Field(2)),
        products=(Products, Field(default_factory=Products)),
        release=(Release, Field(...)),
    )
    toml = next(stored.glob("*_manifest.toml"))
    later = Later.model_validate(tomllib.loads(toml.read_text()))
    assert later.provenance_level == 2 and later.products.ratio_maps is False and later.release.embargo_days == 0
    monkeypatch.setattr(M, "Manifest", Later)
    assert _failures(stored) == []


def test_a_setting_written_into_its_manifest_is_another_manifest(stored):
    """(The check is not vacuous: the same defaults, written out, are a different identity.)"""
    toml = next(stored.glob("*_manifest.toml"))
    text = toml.read_text().replace("[products]\n", "[products]\npreviews = true\n", 1)
    assert text != toml.read_text()
    toml.write_text(text)
    failures = _failures(stored)
    assert any("is not the release manifest's content hash" in f for f in failures), failures
