"""``omniclinic deid``, ``ingest`` and ``inspect``: studies in, identity out, summaries on screen."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from app.commands.audit import audit_engine, checkpoint_if_due, record_operator_event
from app.commands.common import EXIT_FAILED, EXIT_USAGE, fail, progress_bar
from app.core.config import Settings, SettingsError

EXPORT, INSTANCES_ACCESSED = "110106", "110103"  # DCM audit event types
MINOR_FAILURE = 4


class Profile(StrEnum):
    basic = "basic"


def _parse_safe_private(entries: list[str]) -> tuple[tuple[str, int, int], ...]:
    parsed = []
    for entry in entries:
        try:
            creator, group, element = entry.rsplit(":", 2)
            group_number, element_number = int(group, 16), int(element, 16)
        except ValueError:
            raise fail(f"--keep-private takes CREATOR:GGGG:EE (hex), got {entry!r}", EXIT_USAGE) from None
        if group_number % 2 == 0 or not 0 <= element_number <= 0xFF:
            raise fail(f"--keep-private {entry!r}: the group must be odd and the element 00-FF", EXIT_USAGE)
        parsed.append((creator, group_number, element_number))
    return tuple(parsed)


def _deidentifier(
    settings: Settings,
    retain_dates: bool,
    retain_patient_characteristics: bool,
    clean_descriptors: bool,
    keep_private: list[str],
    allow_burned_in: str,
):  # type: ignore[no-untyped-def]
    from app import __version__
    from medical_data.deid import DicomDeidentifier, ProfileOptions

    options = ProfileOptions(
        retain_dates=retain_dates,
        retain_patient_characteristics=retain_patient_characteristics,
        clean_descriptors=clean_descriptors,
        safe_private=_parse_safe_private(keep_private),
    )
    try:
        secret = settings.resolve_deid_secret()
    except SettingsError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    return DicomDeidentifier(
        site_secret=secret,
        options=options,
        allow_burned_in=_parse_modalities(allow_burned_in),
        method_label=f"omniclinic {__version__}",
    )


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} exists and is not a folder", EXIT_USAGE)


RetainDates = Annotated[bool, typer.Option("--retain-dates", help="Shift dates per patient instead of removing them.")]
RetainCharacteristics = Annotated[
    bool, typer.Option("--retain-patient-characteristics", help="Keep age, sex, size, weight.")
]
CleanDescriptors = Annotated[
    bool, typer.Option("--clean-descriptors", help="Keep descriptions and comments with identifiers removed.")
]
KeepPrivate = Annotated[
    list[str], typer.Option("--keep-private", help="Keep a safe private attribute: CREATOR:GGGG:EE (repeatable).")
]
AllowBurnedIn = Annotated[
    str,
    typer.Option(
        "--allow-burned-in",
        metavar="MODALITIES",
        help="Modalities (e.g. US,SC) written with a warning when their pixel text cannot be cleared.",
    ),
]
MODALITY_CODE = re.compile(r"[A-Z][A-Z0-9]{1,15}")


def _parse_modalities(value: str) -> tuple[str, ...]:
    """``US,SC`` to ("US", "SC"); anything that is not a list of DICOM modality codes is a usage error."""
    codes = tuple(part.strip().upper() for part in value.split(",") if part.strip())
    wrong = [code for code in codes if not MODALITY_CODE.fullmatch(code)]
    if wrong:
        raise fail(f"--allow-burned-in takes modality codes such as US,SC; {wrong[0]!r} is not one", EXIT_USAGE)
    return codes


def deid(
    sources: Annotated[list[Path], typer.Argument(help="Files, folders, zips or DICOMDIRs.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Folder for the de-identified tree.")],
    profile: Annotated[Profile, typer.Option(help="Confidentiality profile (PS3.15 Annex E).")] = Profile.basic,
    retain_dates: RetainDates = False,
    retain_patient_characteristics: RetainCharacteristics = False,
    clean_descriptors: CleanDescriptors = False,
    keep_private: KeepPrivate = [],  # noqa: B006 - typer reads the default, never mutates it
    allow_burned_in: AllowBurnedIn = "",
    report: Annotated[Path | None, typer.Option(help="JSON-lines report [default: in the data folder].")] = None,
) -> None:
    """De-identify DICOM studies. Exit 0 when every file was written, 1 when any was quarantined or rejected."""
    from app.commands.common import current_settings
    from medical_data.deid import deidentify_files

    settings = current_settings()
    _check_out_dir(out)
    deidentifier = _deidentifier(
        settings, retain_dates, retain_patient_characteristics, clean_descriptors, keep_private, allow_burned_in
    )
    report_path = report or settings.data_dir / "reports" / f"deid-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.jsonl"
    engine = audit_engine()
    options = deidentifier.options.enabled
    record_operator_event(engine, type_code=EXPORT, details={"tool": "deid", "phase": "started", "options": options})
    with tempfile.TemporaryDirectory(prefix="omniclinic-deid-") as work, progress_bar("de-identifying") as progress:
        summary = deidentify_files(
            sources, out, deidentifier, work_dir=Path(work), report_path=report_path, on_progress=progress
        )
    counts = summary.counts
    record_operator_event(
        engine,
        type_code=EXPORT,
        studies=summary.source_studies,
        outcome=0 if summary.all_written else MINOR_FAILURE,
        details={"tool": "deid", "phase": "finished", "options": options, **counts},
    )
    checkpoint_if_due(engine, force=True)  # a finished export is always under a signed checkpoint
    typer.echo(f"written {counts['written']}, quarantined {counts['quarantined']}, rejected {counts['rejected']}")
    for code, number in sorted(summary.reasons.items()):
        typer.echo(f"  {code}: {number}")
    typer.echo(f"report: {report_path}")
    if not summary.all_written:
        raise typer.Exit(EXIT_FAILED)


def ingest(
    source: Annotated[Path, typer.Argument(help="A hospital folder of studies and report notes.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Folder for the de-identified training dataset.")],
    retain_dates: RetainDates = False,
    retain_patient_characteristics: RetainCharacteristics = False,
    clean_descriptors: CleanDescriptors = False,
    keep_private: KeepPrivate = [],  # noqa: B006
    allow_burned_in: AllowBurnedIn = "",
    cache: Annotated[bool, typer.Option(help="Cache model-ready tensors (MONAI PersistentDataset).")] = True,
    max_frames: Annotated[int, typer.Option(min=2, max=1024, help="Frames kept per series.")] = 32,
    max_pixels: Annotated[
        int | None,
        typer.Option(min=3136, max=16_777_216, help="In-plane pixel budget of cached images [default: 1,003,520]."),
    ] = None,
    window: Annotated[
        str | None, typer.Option(help="A window preset for cached images (lung, brain...); the header's by default.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Processes de-identifying files in parallel.")] = 1,
) -> None:
    """Build a de-identified training dataset; rerun to resume. Exit 1 when files were skipped."""
    from app.commands.common import current_settings
    from medical_data.ingest import MANIFEST_NAME, CacheSettings, ingest_folder
    from medical_data.windows import CT_PRESETS

    if window is not None and window not in CT_PRESETS:
        raise fail(f"--window takes one of {', '.join(sorted(CT_PRESETS))}", EXIT_USAGE)

    settings = current_settings()
    _check_out_dir(out)
    deidentifier = _deidentifier(
        settings, retain_dates, retain_patient_characteristics, clean_descriptors, keep_private, allow_burned_in
    )
    resolved = out.resolve()
    if resolved.is_relative_to(source.resolve()):
        raise fail("--out must not be inside the source folder", EXIT_USAGE)
    state_path = settings.data_dir / "ingest" / f"{hashlib.sha256(str(resolved).encode()).hexdigest()[:16]}.jsonl"
    engine = audit_engine()
    options = deidentifier.options.enabled
    record_operator_event(engine, type_code=EXPORT, details={"tool": "ingest", "phase": "started", "options": options})
    with tempfile.TemporaryDirectory(prefix="omniclinic-ingest-") as work, progress_bar("ingesting") as progress:
        summary = ingest_folder(
            source,
            resolved,
            deidentifier,
            state_path=state_path,
            work_dir=Path(work),
            cache=cache,
            cache_settings=CacheSettings(max_frames, max_pixels or CacheSettings.max_pixels, window),
            workers=workers,
            on_progress=progress,
        )
    record_operator_event(
        engine,
        type_code=EXPORT,
        studies=summary.source_studies,
        outcome=0 if summary.clean else MINOR_FAILURE,
        details={
            "tool": "ingest",
            "phase": "finished",
            "options": options,
            "written": summary.written,
            "already_done": summary.already_done,
            "quarantined": summary.quarantined,
            "rejected": len(summary.rejected),
        },
    )
    checkpoint_if_due(engine, force=True)
    typer.echo(
        f"written {summary.written}, already done {summary.already_done}, quarantined {summary.quarantined}, "
        f"rejected {len(summary.rejected)}"
    )
    typer.echo(
        f"series {summary.series}, cached {summary.cached_series}; "
        f"report notes paired {summary.notes_paired}, unpaired {summary.notes_unpaired}"
    )
    for rejection in summary.rejected:
        typer.echo(f"  skipped {rejection.display_name}: {rejection.reason}")
    for series_uid, reason in summary.uncached_series:
        typer.echo(f"  not cached: series {series_uid}: {reason}")
    typer.echo(f"manifest: {resolved / MANIFEST_NAME}")
    if not summary.clean:
        raise typer.Exit(EXIT_FAILED)


def inspect(
    path: Annotated[Path, typer.Argument(help="A file, folder, zip or DICOMDIR.", exists=True)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    show_identifiers: Annotated[
        bool,
        typer.Option("--show-identifiers", help="Also print UIDs, study dates and descriptions (audited as such)."),
    ] = False,
) -> None:
    """Summarize the studies in PATH: series, modality, sizes, spacing, window. Exit 1 if nothing readable.

    Studies and series are numbered; their UIDs, dates and descriptions are shown only with --show-identifiers.
    """
    from medical_data.discovery import scan
    from medical_data.summary import summarize

    engine = audit_engine()
    with tempfile.TemporaryDirectory(prefix="omniclinic-inspect-") as work:
        result = scan([path], extract_dir=Path(work))
        studies = summarize(result)
    if not show_identifiers:
        studies = [study.without_identifiers(number) for number, study in enumerate(studies, start=1)]
    # shown only once its reading is on record (fail closed)
    record_operator_event(
        engine,
        type_code=INSTANCES_ACCESSED,
        studies=result.studies.keys(),
        details={"tool": "inspect", "identifiers_shown": show_identifiers},
    )
    if as_json:
        payload = {
            "studies": [s.as_dict() for s in studies],
            "rejected": [{"file": r.display_name, "code": r.code, "reason": r.reason} for r in result.rejected],
        }
        typer.echo(json.dumps(payload, indent=2))
    else:
        for study in studies:
            typer.echo(f"study {study.study_instance_uid}  {study.study_date}  {study.study_description}".rstrip())
            for s in study.series:
                size = f"{s.columns}x{s.rows}" + (f"x{s.frames} frames" if s.frames > 1 else "")
                spacing = "x".join(f"{v:g}" for v in s.spacing_mm) + " mm" if s.spacing_mm else "spacing unknown"
                typer.echo(
                    f"  {s.modality or '??':<6} {s.instances:>4} inst  {size:<18} {spacing:<24} {s.window}"
                    f"  [{s.transfer_syntax}] {s.series_description}".rstrip()
                )
                if s.problem:
                    typer.echo(f"         note: {s.problem}")
        if result.rejected:
            typer.echo(f"{len(result.rejected)} file(s) not readable as DICOM:")
            for rejection in result.rejected:
                typer.echo(f"  {rejection.display_name}: {rejection.reason}")
    if not studies:
        raise typer.Exit(EXIT_FAILED)
