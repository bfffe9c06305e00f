"""``draft-reports --pacs``: a real Orthanc (QIDO-RS, WADO-RS, STOW-RS), and PACSs that fail."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.services.drafting import study_key
from tests import orthanc
from tests.app.conftest import write_study

runner = CliRunner()


@pytest.fixture(autouse=True)
def short_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICLINIC_MAX_NEW_TOKENS", "12")
    monkeypatch.setenv("OMNICLINIC_PACS_USERNAME", orthanc.USER)
    monkeypatch.setenv("OMNICLINIC_PACS_PASSWORD", orthanc.PASSWORD)


def draft(*arguments: str) -> object:
    return runner.invoke(cli, ["draft-reports", *arguments], catch_exceptions=False)


@pytest.fixture
def pacs(tmp_path: Path, require_service: Callable[[bool, str], None]) -> Iterator[Callable[..., orthanc.Orthanc]]:
    require_service(orthanc.available(), "Orthanc with its DICOMweb plugin is not installed")
    stack: list[object] = []

    def start(lua: str = "") -> orthanc.Orthanc:
        context = orthanc.running_orthanc(tmp_path / f"orthanc-{len(stack)}", lua=lua)
        stack.append(context)
        return context.__enter__()

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.mark.integration
def test_drafts_a_date_and_modality_worklist_from_orthanc_and_stores_the_srs_back(
    tmp_path: Path, pacs: Callable[..., orthanc.Orthanc]
) -> None:
    server = pacs()
    january, january_files = write_study(tmp_path / "in" / "jan", accession="ACC-JAN", date="20240105")
    february, _ = write_study(tmp_path / "in" / "feb", accession="ACC-FEB", date="20240210")
    server.upload(sorted((tmp_path / "in").rglob("*.dcm")))
    out = tmp_path / "drafts"

    result = draft("--pacs", server.dicomweb_url, "--from", "20240101", "--to", "20240131", "--modality", "CT",
                   "--store", "--out", str(out))  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "1 drafted, 0 already done, 0 failed" in result.output
    assert not (out / study_key(february)).exists()  # outside the date range
    series = server.get(f"/dicom-web/studies/{january}/series?Modality=SR").json()
    assert len(series) == 1  # the SR is in the PACS, in the source study
    sr_series_uid = series[0]["0020000E"]["Value"][0]
    instances = server.get(f"/dicom-web/studies/{january}/series/{sr_series_uid}/instances").json()
    sr_uid = instances[0]["00080018"]["Value"][0]
    done = json.loads((out / study_key(january) / "done.json").read_text())
    assert done["stored"] is True and done["sr_sop_instance_uid"] == sr_uid
    stored = orthanc_instance(server, january, sr_series_uid, sr_uid)
    assert stored.PreliminaryFlag == "PRELIMINARY" and stored.StudyInstanceUID == january
    evidence = stored.CurrentRequestedProcedureEvidenceSequence[0]
    referenced_series = evidence.ReferencedSeriesSequence[0]
    assert referenced_series.SeriesInstanceUID == pydicom.dcmread(january_files[0]).SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced_series.ReferencedSOPSequence} == {
        pydicom.dcmread(p).SOPInstanceUID for p in january_files
    }

    again = draft("--pacs", server.dicomweb_url, "--accession", "ACC-JAN", "--accession", "ACC-FEB",
                  "--accession", "ACC-NONE", "--store",
                  "--out", str(out))  # fmt: skip

    assert again.exit_code == 0, again.output
    assert "1 of 3 accession numbers match no study" in again.output
    assert "1 drafted, 1 already done, 0 failed" in again.output  # January was done; February by accession
    assert len(server.get(f"/dicom-web/studies/{january}/series?Modality=SR").json()) == 1  # no second copy


def orthanc_instance(server: orthanc.Orthanc, study: str, series: str, instance: str) -> pydicom.Dataset:
    from pydicom.filebase import DicomBytesIO

    body = server.get(f"/dicom-web/studies/{study}/series/{series}/instances/{instance}").content
    start = body.index(b"\r\n\r\n") + 4
    end = body.rindex(b"\r\n--")
    return pydicom.dcmread(DicomBytesIO(body[start:end]))


@pytest.mark.integration
def test_an_sr_the_pacs_refuses_fails_that_study_and_a_query_that_matches_nothing_is_an_error(
    tmp_path: Path, pacs: Callable[..., orthanc.Orthanc]
) -> None:
    server = pacs(lua=orthanc.REFUSE_SR_LUA)
    uid, _ = write_study(tmp_path / "in", accession="ACC-R")
    server.upload(sorted((tmp_path / "in").glob("*.dcm")))
    out = tmp_path / "drafts"

    result = draft("--pacs", server.dicomweb_url, "--accession", "ACC-R", "--store", "--out", str(out))

    assert result.exit_code == 1
    outcome = json.loads((out / "summary.json").read_text())["outcomes"][0]
    assert outcome["status"] == "failed" and "refused" in outcome["reason"]
    assert not (out / study_key(uid) / "done.json").exists()  # a re-run stores it again

    nothing = draft("--pacs", server.dicomweb_url, "--accession", "NO-SUCH", "--out", str(out))
    assert nothing.exit_code == 1 and "no studies to draft: the query matched none" in nothing.output


class _Broken(BaseHTTPRequestHandler):
    """A DICOMweb server that lists studies and then answers 500 for each (or for the query)."""

    studies: tuple[str, ...] = ()
    fail_query = False

    def do_GET(self) -> None:
        if self.path.startswith("/dicom-web/studies?") and not self.fail_query:
            body = json.dumps([{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in self.studies]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def broken_pacs() -> Iterator[Callable[..., str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(studies: list[str], fail_query: bool = False) -> str:
        handler = type("Handler", (_Broken,), {"studies": tuple(studies), "fail_query": fail_query})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/dicom-web"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_pacs_that_answers_500_fails_each_study_and_the_job_goes_on(
    tmp_path: Path, broken_pacs: Callable[..., str]
) -> None:
    url = broken_pacs(["1.2.3.4", "1.2.3.5"])
    out = tmp_path / "drafts"

    result = draft("--pacs", url, "--modality", "CT", "--out", str(out))

    assert result.exit_code == 1
    outcomes = json.loads((out / "summary.json").read_text())["outcomes"]
    assert [o["status"] for o in outcomes] == ["failed", "failed"]  # both tried: one failure did not stop the job
    assert all(o["reason"] == "the PACS answered HTTP 500 to a study retrieval" for o in outcomes)
    assert "Traceback" not in result.output

    query_fails = draft("--pacs", broken_pacs([], fail_query=True), "--modality", "CT", "--out", str(out))
    assert query_fails.exit_code == 1
    assert "the PACS query failed: the PACS answered HTTP 500 to a study query" in query_fails.output


def test_a_pacs_that_never_answers_times_out_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    monkeypatch.setenv("OMNICLINIC_PACS_TIMEOUT_S", "0.5")
    try:
        result = draft("--pacs", f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web", "--modality", "CT",
                       "--out", str(tmp_path / "drafts"))  # fmt: skip
    finally:
        listener.close()
    assert result.exit_code == 1
    assert "the PACS query failed: the PACS did not answer a study query in time" in result.output
