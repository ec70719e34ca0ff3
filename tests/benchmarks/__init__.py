"""Benchmarks: heavy measurements against the synthetic truth (`make bench`), not tests."""
