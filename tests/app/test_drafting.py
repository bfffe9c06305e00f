"""``omniclinic draft-reports`` from a folder: the three formats, resuming, failures, sharding, --deid."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.services.drafting import WorkItem, shard, split_sections, study_key
from tests.app.conftest import write_study

runner = CliRunner()


@pytest.fixture(autouse=True)
def short_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICLINIC_MAX_NEW_TOKENS", "12")


def draft(*arguments: str) -> object:
    return runner.invoke(cli, ["draft-reports", *arguments], catch_exceptions=False)


def audit_details(data_dir: Path) -> list[dict[str, object]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{data_dir / 'omniclinic.db'}")
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT action, outcome, entities, details FROM audit_events")).all()
    engine.dispose()
    return [
        {"action": a, "outcome": o, "entities": json.loads(e), "details": json.loads(d or "{}")} for a, o, e, d in rows
    ]


def test_a_folder_job_writes_text_fhir_and_sr_that_name_the_model_and_say_draft(
    tmp_path: Path, isolated_settings: Path
) -> None:
    source = tmp_path / "worklist"
    first, first_files = write_study(source / "a", accession="ACC-1")
    second, _ = write_study(source / "b", accession="ACC-2", slices=2)
    (source / "ACC-1.txt").write_text("Persistent cough; exclude a mass.")
    out = tmp_path / "drafts"

    result = draft(str(source), "--out", str(out))

    assert result.exit_code == 0, result.output
    assert "2 drafted, 0 already done, 0 failed" in result.output
    assert first not in result.output and second not in result.output  # the console names studies by key
    folder = out / study_key(first)
    text = (folder / "report.txt").read_text()
    assert text.startswith("PRELIMINARY DRAFT by tiny (random weights)")
    assert "Persistent cough; exclude a mass." in text  # the paired note is the indication
    assert "CT; chest; CT chest; 2.5 mm slices. 1 series, 3 images." in text  # technique from the header

    fhir = json.loads((folder / "diagnostic-report.json").read_text())
    assert fhir["resourceType"] == "DiagnosticReport" and fhir["status"] == "preliminary"
    assert fhir["study"][0]["identifier"]["value"] == f"urn:oid:{first}"
    assert fhir["code"]["coding"][0]["code"] == "18748-4"
    assert base64.b64decode(fhir["presentedForm"][0]["data"]).decode() == text
    assert fhir["identifier"][0]["value"] == "ACC-1"

    sr = pydicom.dcmread(folder / "report-sr.dcm")
    assert sr.Modality == "SR" and sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.StudyInstanceUID == first
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == first
    referenced = {
        i.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence for i in s.ReferencedSOPSequence
    }
    assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in first_files}
    observer = [
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121013"
    ]  # Device Observer Name
    assert observer and "tiny (random weights)" in observer[0].TextValue  # the model is the device observer

    summary = json.loads((out / "summary.json").read_text())
    assert [o["status"] for o in summary["outcomes"]] == ["drafted", "drafted"]
    events = audit_details(isolated_settings)
    read = [e for e in events if e["details"].get("activity") == "study read for report drafting"]
    written = [e for e in events if e["details"].get("activity") == "report drafted"]
    assert sorted(e["entities"][0]["id"] for e in read) == sorted([first, second])
    assert sorted(e["entities"][0]["id"] for e in written) == sorted([first, second])


def test_a_study_that_cannot_be_read_fails_alone_and_a_rerun_skips_what_is_done(
    tmp_path: Path, isolated_settings: Path
) -> None:
    source = tmp_path / "worklist"
    good, _ = write_study(source / "good")
    bad, bad_files = write_study(source / "bad", accession="ACC-BAD")
    intact = bad_files[1].read_bytes()
    broken = pydicom.dcmread(bad_files[1])
    broken.PixelData = broken.PixelData[:10]  # pixel data cut short: the header reads, the pixels do not
    broken.save_as(bad_files[1], enforce_file_format=True)
    out = tmp_path / "drafts"

    result = draft(str(source), "--out", str(out))

    assert result.exit_code == 1
    assert "1 drafted, 0 already done, 1 failed" in result.output
    outcomes = {o["study_instance_uid"]: o for o in json.loads((out / "summary.json").read_text())["outcomes"]}
    assert outcomes[good]["status"] == "drafted"
    assert outcomes[bad]["status"] == "failed" and outcomes[bad]["reason"].startswith("the study cannot be read")
    assert not (out / study_key(bad)).exists()  # nothing half-written for the failed study
    failed_reads = [e for e in audit_details(isolated_settings) if e["details"].get("job") and e["outcome"] == 4]
    assert [e["entities"][0]["id"] for e in failed_reads] == [bad]

    bad_files[1].write_bytes(intact)
    result = draft(str(source), "--out", str(out))

    assert result.exit_code == 0, result.output
    assert "1 drafted, 1 already done, 0 failed" in result.output
    outcomes = {
        o["study_instance_uid"]: o["status"] for o in json.loads((out / "summary.json").read_text())["outcomes"]
    }
    assert outcomes == {good: "skipped", bad: "drafted"}

    marker = out / study_key(good) / "done.json"
    marker.write_text(marker.read_text().replace("tiny (random weights)", "an older model"))
    result = draft(str(source), "--out", str(out))
    assert "1 drafted, 1 already done, 0 failed" in result.output  # another model's draft is redrafted
    assert "tiny (random weights)" in marker.read_text()


def test_a_second_job_on_the_same_output_folder_is_refused(tmp_path: Path) -> None:
    import fcntl

    source, out = tmp_path / "worklist", tmp_path / "drafts"
    write_study(source / "a")
    out.mkdir()
    with open(out / ".lock-rank-0", "a") as held:  # as a job still running holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        result = draft(str(source), "--out", str(out))
    assert result.exit_code == 1
    assert "another draft-reports job is writing to this output folder" in result.output
    assert not list(out.glob("*/done.json"))


def test_pacs_credentials_never_go_over_plain_http_to_another_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNICLINIC_PACS_USERNAME", "drafts")
    monkeypatch.setenv("OMNICLINIC_PACS_PASSWORD", "secret-password")
    result = draft("--pacs", "http://pacs.example/dicom-web", "--modality", "CT", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "only over https" in result.output
    assert "secret-password" not in result.output


def test_deid_scrubs_identifiers_from_the_text_in_every_format(tmp_path: Path) -> None:
    source = tmp_path / "worklist"
    uid, files = write_study(source / "a", accession="ACC-9", name="Fictional^Ada")
    for path in files:  # a description that names the patient: the technique line copies descriptions
        dataset = pydicom.dcmread(path)
        dataset.StudyDescription = "CT chest Fictional"
        dataset.save_as(path, enforce_file_format=True)
    (source / "ACC-9.txt").write_text("Ada Fictional, MRN 88417723, seen by Dr. Quill on March 3, 2024: cough.")
    out = tmp_path / "drafts"
    undeidentified = draft(str(source), "--out", str(out), "--format", "text")
    assert "Fictional" in (out / study_key(uid) / "report.txt").read_text()

    result = draft(str(source), "--out", str(out), "--deid")

    assert result.exit_code == 0, result.output
    assert "1 drafted, 0 already done" in result.output  # a --deid run redrafts what was drafted without it
    folder = out / study_key(uid)
    text = (folder / "report.txt").read_text()
    for identifier in ("Ada", "Fictional", "88417723", "Quill", "March 3"):
        assert identifier not in text
    assert "cough" in text and "CT chest" in text
    fhir = json.loads((folder / "diagnostic-report.json").read_text())
    assert "subject" not in fhir and "identifier" not in fhir
    assert "Fictional" not in base64.b64decode(fhir["presentedForm"][0]["data"]).decode()
    assert not (folder / "report-sr.dcm").exists()  # the SR carries the patient module: not by default

    with_sr = draft(str(source), "--out", str(out), "--deid", "--format", "text,fhir,sr")
    assert with_sr.exit_code == 0 and "still carries the study's patient module" in with_sr.output
    texts: list[str] = []
    pydicom.dcmread(folder / "report-sr.dcm").walk(
        lambda _, element: texts.append(element.value) if element.keyword == "TextValue" else None
    )
    sr_text = "\n".join(texts)
    assert "cough" in sr_text  # the report's text is there, scrubbed
    assert "88417723" not in sr_text and "Quill" not in sr_text and "Fictional" not in sr_text
    assert undeidentified.exit_code == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((), "give a folder of studies or --pacs URL"),
        (("SRC", "--store"), "--store needs --pacs"),
        (("SRC", "--format", "text,xml"), "formats are some of text, fhir, sr; got xml"),
        (("SRC", "--modality", "CT"), "with a folder, the folder is the worklist"),
        (("--pacs", "http://user:pw@pacs.example/dicom-web", "--modality", "CT"), "not in its URL"),
        (("--pacs", "http://pacs.example/dicom-web"), "not the whole archive"),
        (("--pacs", "http://pacs.example/dicom-web", "--from", "2024-01-01"), "dates are YYYYMMDD"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, arguments: tuple[str, ...], message: str) -> None:
    (tmp_path / "src").mkdir()
    arguments = tuple(str(tmp_path / "src") if a == "SRC" else a for a in arguments)
    result = draft(*arguments, "--out", str(tmp_path / "out"))
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_empty_folder_and_an_out_folder_inside_the_source_are_refused(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    result = draft(str(tmp_path / "src"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "no studies to draft: the folder holds none" in result.output
    result = draft(str(tmp_path / "src"), "--out", str(tmp_path / "src" / "drafts"))
    assert result.exit_code == 2 and "--out must not be inside the source folder" in result.output


def test_every_study_goes_to_exactly_one_rank_whatever_the_order() -> None:
    items = [WorkItem(f"1.2.3.{n}", "", n) for n in range(200)]
    for world in (1, 2, 3, 8):
        shares = [shard(items, rank, world) for rank in range(world)]
        assert sorted(i.study_instance_uid for s in shares for i in s) == sorted(i.study_instance_uid for i in items)
        assert all(shares), "every rank gets work from 200 studies"
        reversed_shares = [shard(items[::-1], rank, world) for rank in range(world)]
        assert [{i.key for i in s} for s in reversed_shares] == [{i.key for i in s} for s in shares]


def test_sections_are_split_when_the_model_writes_them() -> None:
    assert split_sections("Findings: A 6 mm nodule.\nImpression: Nodule.") == ("A 6 mm nodule.", "Nodule.")
    assert split_sections("FINDINGS:\nclear lungs\n\nCONCLUSION: normal") == ("clear lungs", "normal")
    assert split_sections("no headings at all") == ("no headings at all", "")


def _studies(source: Path, count: int) -> list[str]:
    return [write_study(source / f"s{n}", accession=f"ACC-{n}", slices=2)[0] for n in range(count)]


def test_workers_share_the_worklist_and_the_summary_is_whole(tmp_path: Path, isolated_settings: Path) -> None:
    source, out = tmp_path / "worklist", tmp_path / "drafts"
    uids = _studies(source, 4)

    result = draft(str(source), "--out", str(out), "--workers", "2", "--format", "text")

    assert result.exit_code == 0, result.output
    assert "4 drafted, 0 already done, 0 failed" in result.output
    parts = sorted((out / "summary").glob("part-*-of-00002.json"))
    assert len(parts) == 2
    ranks = {json.loads(p.read_text())["rank"]: json.loads(p.read_text())["outcomes"] for p in parts}
    taken = [o["study_instance_uid"] for outcomes in ranks.values() for o in outcomes]
    assert sorted(taken) == sorted(uids)  # each study drafted once, by one worker
    jobs = {json.loads((out / study_key(uid) / "done.json").read_text())["job"] for uid in uids}
    assert len(jobs) == 1  # the workers are one job


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_launches_ranks_that_each_take_their_share(tmp_path: Path, isolated_settings: Path) -> None:
    source, out = tmp_path / "worklist", tmp_path / "drafts"
    uids = _studies(source, 3)
    broken_uid, broken_files = write_study(source / "broken", accession="ACC-X", slices=2)
    broken = pydicom.dcmread(broken_files[0])
    broken.PixelData = broken.PixelData[:10]
    broken.save_as(broken_files[0], enforce_file_format=True)
    bin_dir = os.path.dirname(sys.executable)
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = [f"{bin_dir}/torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "2", "--no-python"]
    command += ["omniclinic", "draft-reports", str(source), "--out", str(out), "--format", "text,fhir", "--quiet"]

    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    # a study that fails does not fail its rank: torchrun would stop every other rank
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    statuses = {o["study_instance_uid"]: o["status"] for o in summary["outcomes"]}
    assert statuses == {**dict.fromkeys(uids, "drafted"), broken_uid: "failed"}
    assert "3 of 4 studies drafted or done; 1 failed" in completed.stdout


def test_an_unexpected_error_in_one_study_fails_it_alone_and_keeps_its_message_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medical_data.report_formats as formats

    source, out = tmp_path / "worklist", tmp_path / "drafts"
    uids = _studies(source, 2)
    refused = sorted(uids)[0]  # the first on the worklist
    real_as_sr = formats.as_sr

    def as_sr(draft, evidence, image):  # type: ignore[no-untyped-def]
        if draft.study_instance_uid == refused:
            raise ValueError("value 'Doe^Jane' is invalid")  # writers quote header values in their errors
        return real_as_sr(draft, evidence, image)

    monkeypatch.setattr(formats, "as_sr", as_sr)
    result = draft(str(source), "--out", str(out))

    assert result.exit_code == 1
    outcomes = {o["study_instance_uid"]: o for o in json.loads((out / "summary.json").read_text())["outcomes"]}
    assert outcomes[refused]["reason"] == "unexpected ValueError while drafting (nothing of it was kept)"
    assert [o["status"] for o in outcomes.values()].count("drafted") == 1
    assert "Doe" not in result.output and "Doe" not in (out / "summary.tsv").read_text()
    assert not (out / study_key(refused)).exists() and not (out / ".work").exists()
