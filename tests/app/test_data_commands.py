"""`omniclinic deid`, `ingest` and `inspect` as a user runs them."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from app.cli import cli

from ..medical_data.conftest import make_ct_slice

runner = CliRunner()
SECRETS = ("Rivera", "Tomas", "H9912345", "ACC777")


@pytest.fixture
def hospital(tmp_path: Path) -> Path:
    """A small hospital export: one CT series with a report, an MR image, an ultrasound (its pixel text is
    masked), an external photograph that shows a face (quarantined), a cut file."""
    root = tmp_path / "export"
    (root / "ct").mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for index in range(4):
        ds = make_ct_slice(
            position=(0, 0, 2.0 * index),
            instance_number=index + 1,
            study_uid=study,
            series_uid=series,
            pixels=np.full((16, 16), 1000 + 40 * index),
        )
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "Rivera^Tomas", "H9912345", "ACC777"
        ds.save_as(root / "ct" / f"{index}.dcm", enforce_file_format=True)
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "mr.dcm")
    shutil.copy(get_testdata_file("US1_UNCR.dcm"), root / "us.dcm")
    photo = make_ct_slice(study_uid=generate_uid(), series_uid=generate_uid())
    photo.Modality, photo.RecognizableVisualFeatures = "XC", "YES"
    photo.save_as(root / "photo.dcm", enforce_file_format=True)
    (root / "cut.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:3000])
    (root / "reports.csv").write_text(
        'accession_number,text\nACC777,"Tomas Rivera (H9912345): 6 mm nodule, right lower lobe."\n', encoding="utf-8"
    )
    return root


def _all_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


@pytest.mark.usefixtures("ocr")  # the ultrasound's pixel text is masked, not quarantined
def test_deid_writes_a_clean_tree_and_exits_1_on_problems(
    hospital: Path, tmp_path: Path, isolated_settings: Path
) -> None:
    out = tmp_path / "deid"
    result = runner.invoke(cli, ["deid", str(hospital), "--out", str(out), "--report", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 1, result.output
    assert "written 6, quarantined 1, rejected 2" in result.stdout  # the cut file and the CSV are rejected
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 6
    text = _all_text(out)
    assert not any(secret in text for secret in SECRETS)
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {line["status"] for line in lines} == {"written", "quarantined", "rejected"}
    key = isolated_settings / "deid_secret"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_deid_exit_0_when_all_written_and_stable_across_runs(hospital: Path, tmp_path: Path) -> None:
    for run in ("a", "b"):
        result = runner.invoke(cli, ["deid", str(hospital / "ct"), "--out", str(tmp_path / run)])
        assert result.exit_code == 0, result.output
    names_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    names_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
    assert names_a == names_b and len(names_a) == 4  # the same site key maps the same UIDs


def test_deid_options_reach_the_files(hospital: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        cli,
        [
            "deid",
            str(hospital / "ct"),
            "--out",
            str(tmp_path / "o"),
            "--retain-dates",
            "--retain-patient-characteristics",
            "--clean-descriptors",
        ],
    )
    assert result.exit_code == 0, result.output
    ds = pydicom.dcmread(next((tmp_path / "o").rglob("*.dcm")))
    assert {item.CodeValue for item in ds.DeidentificationMethodCodeSequence} == {
        "113100",
        "113107",
        "113108",
        "113105",
    }


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--keep-private", "nonsense"], "CREATOR:GGGG:EE"),
        (["--keep-private", "X:0010:10"], "group must be odd"),
        (["--profile", "strict"], "strict"),
        (["--allow-burned-in", "US,all of them"], "modality codes"),
    ],
)
def test_deid_usage_errors_exit_2(hospital: Path, tmp_path: Path, arguments: list[str], message: str) -> None:
    result = runner.invoke(cli, ["deid", str(hospital), "--out", str(tmp_path / "o"), *arguments])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_deid_missing_source_and_file_as_out_exit_2(hospital: Path, tmp_path: Path) -> None:
    assert runner.invoke(cli, ["deid", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]).exit_code == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(cli, ["deid", str(hospital), "--out", str(blocker)])
    assert result.exit_code == 2 and "not a folder" in result.output


@pytest.mark.usefixtures("ocr")
def test_ingest_builds_a_dataset_and_resumes(hospital: Path, tmp_path: Path, isolated_settings: Path) -> None:
    out = tmp_path / "dataset"
    first = runner.invoke(cli, ["ingest", str(hospital), "--out", str(out)])
    assert first.exit_code == 1, first.output  # the photograph is quarantined, the cut file skipped and listed
    assert "skipped" in first.stdout and "cut.dcm" in first.stdout
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(entry["modality"] for entry in manifest) == ["CT", "MR", "US"]
    ct = next(entry for entry in manifest if entry["modality"] == "CT")
    assert ct["instances"] == 4 and ct["cached"] and ct["report"]
    report = (out / ct["report"]).read_text()
    assert "6 mm nodule, right lower lobe" in report
    assert not any(secret in _all_text(out) for secret in SECRETS)
    assert not any(str(hospital) in line for line in (out / "manifest.jsonl").read_text().splitlines())
    assert len(list((out / "cache").glob("*.pt"))) == 3

    again = runner.invoke(cli, ["ingest", str(hospital), "--out", str(out)])
    assert "written 0, already done 8" in again.stdout, again.output

    from medical_data.ingest import cached_dataset

    dataset = cached_dataset(out)
    images = [dataset[i]["image"] for i in range(len(dataset))]
    assert all(image.shape[-1] % 28 == 0 and image.shape[-2] % 28 == 0 for image in images)
    assert sorted(image.meta["Modality"] for image in images) == ["CT", "MR", "US"]  # header facts from the cache
    ct_image = next(image for image in images if image.meta["Modality"] == "CT")
    assert ct_image.shape[1] == 4 and float(ct_image[0, 3].mean()) > float(ct_image[0, 0].mean())  # slices in order


def test_ingest_refuses_out_inside_source(hospital: Path) -> None:
    result = runner.invoke(cli, ["ingest", str(hospital), "--out", str(hospital / "dataset")])
    assert result.exit_code == 2 and "inside the source" in result.output


def test_inspect_summarizes_without_identity(hospital: Path) -> None:
    result = runner.invoke(cli, ["inspect", str(hospital)])
    assert result.exit_code == 0, result.output
    assert "CT" in result.stdout and "4 inst" in result.stdout and "2x0.7x0.8 mm" in result.stdout
    assert "not readable as DICOM" in result.stdout
    assert not any(secret in result.stdout for secret in ("Rivera", "H9912345"))
    payload = json.loads(runner.invoke(cli, ["inspect", str(hospital), "--json"]).stdout)
    assert {s["modality"] for study in payload["studies"] for s in study["series"]} == {"CT", "MR", "US", "XC"}


def test_inspect_nothing_readable_exits_1(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    assert runner.invoke(cli, ["inspect", str(tmp_path)]).exit_code == 1


def _audit_events() -> list[dict]:  # type: ignore[type-arg]
    listing = runner.invoke(cli, ["audit", "list", "--json", "--limit", "1000"])
    return [json.loads(line) for line in listing.stdout.splitlines()]


def test_deid_is_audited_before_and_after(hospital: Path, tmp_path: Path) -> None:
    runner.invoke(cli, ["deid", str(hospital / "ct"), "--out", str(tmp_path / "o")])
    export = [e for e in _audit_events() if e["type_code"] == "110106"]
    assert [e["details"]["phase"] for e in export] == ["started", "finished"]
    finished = export[1]
    original_study = str(pydicom.dcmread(next((hospital / "ct").glob("*.dcm"))).StudyInstanceUID)
    assert finished["entities"] == [{"id": original_study, "kind": "study"}]
    assert finished["details"]["written"] == 4 and finished["outcome"] == 0


def test_inspect_is_audited(hospital: Path) -> None:
    runner.invoke(cli, ["inspect", str(hospital / "ct")])
    (accessed,) = [e for e in _audit_events() if e["type_code"] == "110103"]
    assert len(accessed["entities"]) == 1 and accessed["details"] == {"tool": "inspect", "identifiers_shown": False}


def test_inspect_shows_no_uid_date_or_description_unless_asked_and_audits_the_asking(hospital: Path) -> None:
    header = pydicom.dcmread(next((hospital / "ct").glob("*.dcm")))
    identifiers = [str(header.StudyInstanceUID), str(header.SeriesInstanceUID), "Made-up CT study"]
    for path in (hospital / "ct").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.StudyDescription, ds.StudyDate = identifiers[2], "20240229"
        ds.save_as(path)
    plain = runner.invoke(cli, ["inspect", str(hospital / "ct")])
    as_json = runner.invoke(cli, ["inspect", str(hospital / "ct"), "--json"])
    for output in (plain.stdout, as_json.stdout):
        assert not [value for value in [*identifiers, "20240229"] if value in output]
    assert "study 1" in plain.stdout and "4 inst" in plain.stdout
    shown = runner.invoke(cli, ["inspect", str(hospital / "ct"), "--show-identifiers", "--json"]).stdout
    assert [value for value in [*identifiers, "20240229"] if value not in shown] == []
    accessed = [e["details"] for e in _audit_events() if e["type_code"] == "110103"]
    assert [details["identifiers_shown"] for details in accessed] == [False, False, True]


def test_no_audit_trail_no_deidentification(hospital: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICLINIC_DATABASE_URL", f"sqlite:///{tmp_path}/no/such/folder/audit.db")
    result = runner.invoke(cli, ["deid", str(hospital), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert not (tmp_path / "o").exists()  # not one file was read or written


def test_malformed_values_never_reach_the_terminal_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """pydicom quotes malformed values in its warnings; with a name in such a value, none may leak."""
    ds = make_ct_slice()
    ds.PatientName = "Zebulon^Quartermaine"
    ds.add_new(0x00081030, "LO", "Zebulon Quartermaine study")
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):  # pydicom quotes it: what must not leak
        ds.StudyInstanceUID = "1.2.826.Zebulon"
    ds.save_as(tmp_path / "bad.dcm", enforce_file_format=True)
    caplog.clear()  # building the file above makes pydicom warn in this test's own code
    with caplog.at_level("DEBUG"):
        result = runner.invoke(cli, ["deid", str(tmp_path / "bad.dcm"), "--out", str(tmp_path / "o")])
        inspected = runner.invoke(cli, ["inspect", str(tmp_path / "bad.dcm")])
    assert result.exit_code == 0, result.output
    for text in (result.output, result.stderr, caplog.text, inspected.stderr):
        assert "Zebulon" not in text
