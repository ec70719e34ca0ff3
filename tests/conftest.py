"""Shared fixtures. Heavy fixtures (the synthetic program, pipeline runs) are session-scoped."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
