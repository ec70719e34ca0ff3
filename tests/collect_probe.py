"""A pytest plugin for tests/test_tiers.py: after collection, writes every collected test's
fixture closure and markers, and the pipeline fixtures conftest declared, to the JSON file named
by HLSP_COLLECT_PROBE."""

from __future__ import annotations

import json
import os


def pytest_collection_finish(session):
    from tests.conftest import PIPELINE_FIXTURES

    out = {
        "pipeline_fixtures": sorted(PIPELINE_FIXTURES),
        "tests": {
            item.nodeid: {"fixtures": sorted(item.fixturenames), "markers": sorted(m.name for m in item.iter_markers())}
            for item in session.items
        },
    }
    with open(os.environ["HLSP_COLLECT_PROBE"], "w") as f:
        json.dump(out, f)
