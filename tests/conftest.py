"""Shared fixtures. Heavy fixtures (the synthetic program, pipeline runs) are session-scoped."""

from __future__ import annotations

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
    return run_default_pipeline(clean_program, tmp_path_factory.mktemp("clean-default"), targets=["synth1"], lv3_params=params)


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
