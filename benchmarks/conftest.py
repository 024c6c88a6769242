"""Shared by the pytest-benchmark suites: a place for suites to leave figures, and a summary of the ratios.

Run with `pytest benchmarks/ --benchmark-only` (these files are outside the default `pytest` run: testpaths is
`tests/`). Nothing here asserts anything about speed; pytest-benchmark records the timings, and the summary below
prints the ratios measured side by side in this run.
"""

import pytest

SUMMARY: dict = {}


@pytest.fixture
def summary():
    return SUMMARY


def pytest_terminal_summary(terminalreporter):
    if not SUMMARY:
        return
    terminalreporter.section("fastopt ratios (this run)")
    for key, value in SUMMARY.items():
        terminalreporter.write_line(f"{key}: {value}")
