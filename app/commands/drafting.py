"""``omniclinic draft-reports``: drafts for a worklist of studies, from a folder or a PACS, overnight.

One process drafts its share of the worklist (``RANK``/``WORLD_SIZE`` when ``torchrun`` launched it);
``--workers N`` starts N such processes on this machine with the same environment a launcher gives.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer

from app.commands.common import EXIT_FAILED, EXIT_USAGE, current_settings, fail, open_app_database, progress_bar
from omniclinic_common.files import replace_private_file

Source = Annotated[Path | None, typer.Argument(help="A folder of studies (files, zips, DICOMDIRs; notes beside them).")]
Out = Annotated[Path, typer.Option("--out", help="Where the drafts go: one folder per study, and the summary.")]
PacsUrl = Annotated[
    str | None,
    typer.Option(
        "--pacs",
        help="DICOMweb root of a PACS: the source when no folder is given, and where --store stores. "
        "Credentials: OMNICLINIC_PACS_USERNAME and OMNICLINIC_PACS_PASSWORD.",
    ),
]
DateFrom = Annotated[str, typer.Option("--from", help="PACS query: studies on or after this date (YYYYMMDD).")]
DateTo = Annotated[str, typer.Option("--to", help="PACS query: studies on or before this date (YYYYMMDD).")]
Modality = Annotated[list[str], typer.Option("--modality", help="PACS query: a modality in the study (repeatable).")]
Accession = Annotated[
    list[str], typer.Option("--accession", help="PACS query: an accession number on the worklist (repeatable).")
]
AccessionFile = Annotated[
    Path | None, typer.Option("--accession-file", help="PACS query: accession numbers, one per line.")
]
Notes = Annotated[
    list[Path], typer.Option("--notes", help="Notes (file or folder) paired to studies for the indication.")
]
Formats = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="Comma-separated: text, fhir, sr (default all three; text,fhir with --deid unless --store, "
        "since the SR carries the study's patient module).",
    ),
]
Store = Annotated[bool, typer.Option("--store", help="Store each SR back to the PACS (STOW-RS).")]
Deid = Annotated[bool, typer.Option("--deid", help="Scrub identifiers from the report text before it is written.")]
Workers = Annotated[int, typer.Option("--workers", min=1, max=256, help="Processes on this machine.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar and no table (for launchers and logs).")]

CHILD_POLL_S = 0.5


def draft_reports(
    source: Source = None,
    out: Out = Path("drafts"),
    pacs: PacsUrl = None,
    date_from: DateFrom = "",
    date_to: DateTo = "",
    modality: Modality = [],  # noqa: B006 - typer reads the default, never mutates it
    accession: Accession = [],  # noqa: B006
    accession_file: AccessionFile = None,
    notes: Notes = [],  # noqa: B006
    formats: Formats = None,
    store: Store = False,
    deid: Deid = False,
    workers: Workers = 1,
    quiet: Quiet = False,
) -> None:
    """Draft reports for a worklist of studies: text, FHIR DiagnosticReport, DICOM SR. Every draft names
    the model and says it is a draft; done studies are skipped on a re-run; failures are listed."""
    from app.services.drafting import DraftingError, launch_env

    if formats is None:
        formats = "text,fhir" if deid and not store else "text,fhir,sr"
    options = _options(formats, deid, store, pacs)
    if deid and "sr" in options.formats and not quiet:
        typer.echo("note: with --deid the text is scrubbed; the SR still carries the study's patient module", err=True)
    query = _query(source, pacs, date_from, date_to, modality, accession, accession_file)
    out = out.expanduser().resolve()
    if source is not None:
        source = source.expanduser().resolve()
        if not source.is_dir():
            raise fail("the source must be a folder of studies", EXIT_USAGE)
        if out == source or out.is_relative_to(source):
            raise fail("--out must not be inside the source folder", EXIT_USAGE)
    if out.exists() and not out.is_dir():
        raise fail("--out exists and is not a folder", EXIT_USAGE)
    settings = current_settings()
    engine = open_app_database(settings)  # migrated once here, before any worker opens it
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        rank, world, local_world = launch_env()
    except DraftingError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if workers > 1 and "WORLD_SIZE" not in os.environ:
        engine.dispose()
        _prepare_model(settings)  # built once here, not raced by every worker
        code = _run_workers(workers, source, out, pacs, query, notes, options, quiet)
        raise typer.Exit(code)
    job = _job_id(world)
    with _rank_lock(out, rank):
        code = _run_rank(
            settings, engine, source, out, pacs, query, notes, options, rank, world, local_world, quiet, job
        )
    raise typer.Exit(code)


def _job_id(world: int) -> str:
    """The job's id, the same in every rank: the launcher's run id (torchrun's ``--rdzv-id``; torchrun's
    default "none" is no id), ``OMNICLINIC_JOB_ID``, or, for a single process, a new one."""
    for name in ("OMNICLINIC_JOB_ID", "TORCHELASTIC_RUN_ID"):
        value = os.environ.get(name, "").strip()
        if value and value != "none":
            return value[:64]
    if world > 1:
        raise fail(
            "the ranks of one launch need a shared job id: torchrun --rdzv-id ID (or --standalone), "
            "or OMNICLINIC_JOB_ID=ID",
            EXIT_USAGE,
        )
    return str(uuid.uuid4())


@contextmanager
def _rank_lock(out: Path, rank: int) -> Iterator[None]:
    """One process per rank and output folder: a second job on the same folder (a cron run still going
    when the next starts) is refused instead of undoing the first one's work."""
    with open(out / f".lock-rank-{rank}", "a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise fail("another draft-reports job is writing to this output folder; wait for it to end") from None
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _prepare_model(settings: Any) -> None:
    from app.services.assistant import prepare_served_model

    prepare_served_model(settings)


def _options(formats: str, deid: bool, store: bool, pacs: str | None) -> Any:
    from app.services.drafting import DraftOptions

    chosen = tuple(dict.fromkeys(part.strip().lower() for part in formats.split(",") if part.strip()))
    if store and not pacs:
        raise fail("--store needs --pacs: the PACS to store the SRs in", EXIT_USAGE)
    try:
        return DraftOptions(formats=chosen, deid=deid, store=store)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def _query(
    source: Path | None,
    pacs: str | None,
    date_from: str,
    date_to: str,
    modality: list[str],
    accession: list[str],
    accession_file: Path | None,
) -> Any:
    from medical_data.dicomweb import StudyQuery

    accessions = list(accession)
    if accession_file is not None:
        try:
            accessions += [line.strip() for line in accession_file.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError):
            raise fail("--accession-file cannot be read as text", EXIT_USAGE) from None
    accessions = [a for a in dict.fromkeys(accessions) if a]
    narrowed = bool(date_from or date_to or modality or accessions)
    if source is None and not pacs:
        raise fail("give a folder of studies or --pacs URL", EXIT_USAGE)
    if source is not None and narrowed:
        raise fail("--from, --to, --modality and --accession query a PACS; with a folder, the folder is the worklist")
    if source is not None:
        return None
    if not narrowed:
        raise fail("a PACS worklist needs --from/--to, --modality or --accession (not the whole archive)", EXIT_USAGE)
    modalities = [m.strip().upper() for entry in modality for m in entry.split(",") if m.strip()]
    try:
        return StudyQuery(date_from, date_to, tuple(modalities), tuple(accessions))
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def _pacs(settings: Any, url: str) -> Any:
    from medical_data.dicomweb import Pacs, PacsError

    try:
        return Pacs(
            url,
            username=settings.pacs_username,
            password=settings.pacs_password.get_secret_value(),
            timeout_s=settings.pacs_timeout_s,
        )
    except PacsError as exc:
        raise fail(exc.reason, EXIT_USAGE) from None


def _run_rank(
    settings: Any,
    engine: Any,
    source_dir: Path | None,
    out: Path,
    pacs_url: str | None,
    query: Any,
    notes: list[Path],
    options: Any,
    rank: int,
    world: int,
    local_world: int,
    quiet: bool,
    job: str,
) -> int:
    """Draft this rank's share. Exit status: 0, or 1 when a study failed; under a launcher 0 for study
    failures too (they are in the summary), since a launcher stops every rank when one exits non-zero."""
    from app.services.assistant import Assistant
    from app.services.auditing import Actor
    from app.services.drafting import Drafter, DraftingError, FolderSource, PacsSource, merge_summaries, shard
    from medical_data.dicomweb import PacsError

    threads = max(1, (os.cpu_count() or 1) // local_world)
    if "OMNICLINIC_CPU_THREADS" not in os.environ:
        settings = settings.model_copy(update={"cpu_threads": threads})
    pacs = _pacs(settings, pacs_url) if pacs_url else None
    try:
        if source_dir is not None:
            source: Any = FolderSource(source_dir, work_dir=out / ".work" / f"scan-{rank}", notes=notes)
        else:
            source = PacsSource(pacs, query, notes=notes)
    except PacsError as exc:
        raise fail(f"the PACS query failed: {exc.reason}") from None
    except DraftingError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    worklist = source.worklist()
    if not worklist:
        raise fail("no studies to draft: " + ("the folder holds none" if source_dir else "the query matched none"))
    if rank == 0 and not quiet:
        for line in source.notices():
            typer.echo(line, err=True)
    items = shard(worklist, rank, world)
    for stale in ("summary.json", "summary.tsv"):  # an earlier job's whole summary must not pass for this one's
        (out / stale).unlink(missing_ok=True)
    assistant = Assistant(settings)
    drafter = Drafter(assistant, out, options, audit_engine=engine, actor=Actor.at_command_line(), job=job, pacs=pacs)
    if not quiet and world > 1:
        typer.echo(f"rank {rank} of {world}: {len(items)} of {len(worklist)} studies", err=True)
    with progress_bar("drafting", enabled=not quiet) as update:
        summary = drafter.run(
            source,
            items,
            rank=rank,
            world_size=world,
            progress=(lambda s: update(len(s.outcomes), s.total)) if update else None,
        )
    shutil.rmtree(out / ".work" / f"scan-{rank}", ignore_errors=True)  # zips the scan unpacked
    with suppress(OSError):
        (out / ".work").rmdir()
    merged = merge_summaries(out, world, job)
    if not quiet:
        _print_table(merged if merged is not None else summary.outcomes, assistant.info.name, out)
    elif merged is not None and world > 1:  # the last rank out says how the whole job ended
        failed = sum(o.status == "failed" for o in merged)
        typer.echo(f"job {job}: {len(merged) - failed} of {len(merged)} studies drafted or done; {failed} failed")
    if world > 1:
        return 0
    return EXIT_FAILED if summary.count("failed") else 0


def _run_workers(
    workers: int,
    source: Path | None,
    out: Path,
    pacs: str | None,
    query: Any,
    notes: list[Path],
    options: Any,
    quiet: bool,
) -> int:
    """N processes of this command, each given RANK, WORLD_SIZE and LOCAL_WORLD_SIZE as torchrun
    would; this one shows their progress and the whole job's table."""
    from app.services.drafting import merge_summaries, read_summary_parts, summary_part_path

    arguments = ["draft-reports", "--out", str(out), "--format", ",".join(options.formats), "--quiet"]
    if source is not None:
        arguments.insert(1, str(source))
    if pacs:
        arguments += ["--pacs", pacs]
    if query is not None:
        arguments += ["--from", query.date_from, "--to", query.date_to]
        arguments += [part for m in query.modalities for part in ("--modality", m)]
        if query.accession_numbers:  # in a private file, not on command lines any local user can read
            listing = out / ".work" / "accessions.txt"
            listing.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            replace_private_file(listing, "".join(f"{a}\n" for a in query.accession_numbers).encode("utf-8"))
            arguments += ["--accession-file", str(listing)]
    arguments += [part for note in notes for part in ("--notes", str(note))]
    arguments += ["--store"] * options.store + ["--deid"] * options.deid
    job = str(uuid.uuid4())
    for rank in range(workers):
        summary_part_path(out, rank, workers).unlink(missing_ok=True)
    children = []
    for rank in range(workers):
        env = os.environ | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(workers),
            "LOCAL_WORLD_SIZE": str(workers),
            "OMNICLINIC_JOB_ID": job,
        }
        children.append(subprocess.Popen([sys.executable, "-m", "app.cli", *arguments], env=env))
    try:
        with progress_bar("drafting", enabled=not quiet) as update:
            while any(child.poll() is None for child in children):
                parts = read_summary_parts(out, workers)
                if update:
                    update(sum(len(p["outcomes"]) for p in parts), sum(p["total"] for p in parts) or None)
                time.sleep(CHILD_POLL_S)
    except KeyboardInterrupt:
        for child in children:
            child.terminate()
        raise
    codes = [child.wait() for child in children]
    (out / ".work" / "accessions.txt").unlink(missing_ok=True)
    with suppress(OSError):
        (out / ".work").rmdir()
    merged = merge_summaries(out, workers, job)
    if merged is None:
        raise fail("the workers stopped before the end (their errors are above); run again to resume")
    if not quiet:
        from app.services.assistant import describe_model

        _print_table(merged, describe_model(current_settings()).name, out)
    return EXIT_FAILED if any(o.status == "failed" for o in merged) or any(codes) else 0


def _print_table(outcomes: Any, model_name: str, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from app.services.drafting import iter_outcome_rows

    outcomes = list(outcomes)
    table = Table(title=f"Report drafts by {model_name} (studies named by their key: see summary.tsv)")
    for column in ("#", "key", "status", "images", "seconds", "stored", "reason"):
        table.add_column(column, overflow="fold")
    for row in iter_outcome_rows(outcomes):
        table.add_row(*row)
    console = Console(width=max(100, Console().width))
    console.print(table)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("drafted", "skipped", "failed")}
    typer.echo(
        f"{counts['drafted']} drafted, {counts['skipped']} already done, {counts['failed']} failed; drafts in {out}"
    )
