"""Integration tests skip with a reason when a service is missing, and fail instead when CI requires them."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
PROBE = """
def test_needs_pacs(require_service):
    require_service(False, "Orthanc is not installed")
"""


@pytest.mark.parametrize(("required", "outcome"), [("0", "skipped"), ("1", "failed")])
def test_missing_service(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, required: str, outcome: str
) -> None:
    monkeypatch.setenv("OMNICLINIC_REQUIRE_INTEGRATION", required)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(PROBE)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*Orthanc is not installed*"])


def test_present_service_runs(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile("def test_ok(require_service):\n    require_service(True, 'unused')\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
