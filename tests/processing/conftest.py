"""Fixtures shared by the processing tests."""

from tests.processing.test_stages import toy  # noqa: F401 (the toy program and stages, for every module here)
