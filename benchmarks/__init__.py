"""Benchmark runner, profiles, reports and pytest-benchmark suites."""
