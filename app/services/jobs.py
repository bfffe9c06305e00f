"""Jobs the API runs in the background: batch report drafting over stored studies.

A job is a row in ``app_jobs`` and a folder under the data folder's ``jobs/``; one worker thread
runs jobs one at a time, through the same ``Drafter`` as ``omniclinic draft-reports`` and through the
same model queue as clinicians' questions (a question waiting for the model goes first between two
studies). Each draft also becomes a report in the app, for a clinician to edit and sign. A job that
a restart interrupted is marked so and can be resumed: studies drafted before are skipped.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.models import Job, Report
from app.services.assistant import Assistant
from app.services.auditing import Actor
from app.services.drafting import (
    FILE_NAMES,
    Drafter,
    DraftOptions,
    ShardSummary,
    StudyFailed,
    WorkItem,
    study_key,
)
from app.services.studies import StudyNotFound, StudyStore
from audit import unit_of_work

logger = logging.getLogger("omniclinic.jobs")

DRAFT_JOB = "draft-reports"
MAX_JOB_STUDIES = 10_000
OWNER = f"{socket.gethostname()}:{os.getpid()}"
"""The process that queues a job runs it (its queue is in memory)."""


def _owner_alive(owner: str) -> bool:
    """Whether the process that holds a job is still running (on this machine; another's is trusted)."""
    host, _, pid = owner.rpartition(":")
    if not pid.isdigit():
        return False
    if host != socket.gethostname():
        return True
    if int(pid) == os.getpid():
        return False  # this process is starting: whatever it held before is gone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobConflict(ValueError):
    """A change a job's state does not allow (resuming a job that is running)."""


class JobRejected(ValueError):
    """A job that cannot be made as asked (the message says why; no identifiers)."""


class StoredSource:
    """Studies stored in the app, by UID, in the order of their keys."""

    def __init__(self, studies: StudyStore, study_uids: list[str]) -> None:
        self.studies, self.study_uids = studies, sorted(set(study_uids))

    def worklist(self) -> list[WorkItem]:
        return [WorkItem(uid, "", position) for position, uid in enumerate(self.study_uids, 1)]

    def fetch(self, item: WorkItem, work_dir: Path) -> list[Path]:
        try:
            study = self.studies.get(item.study_instance_uid)
        except StudyNotFound:
            raise StudyFailed("the study is no longer stored") from None
        return [instance.path for series in self.studies.series(study) for instance in series.instances]

    def indication(self, item: WorkItem) -> str:
        return ""

    def notices(self) -> list[str]:
        return []


class JobService:
    def __init__(self, settings: Settings, engine: Engine, studies: StudyStore, assistant: Assistant) -> None:
        self.settings, self.engine, self.studies, self.assistant = settings, engine, studies, assistant
        self._queue: queue.SimpleQueue[tuple[str, Actor] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def jobs_dir(self) -> Path:
        return self.settings.data_dir / "jobs"

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Mark jobs that a process no longer running left unfinished as interrupted (not those another
        live worker of ``serve --workers`` holds); start this process's worker."""
        with unit_of_work(self.engine) as session:
            for job in session.scalars(select(Job).where(Job.status.in_(("queued", "running")))):
                if not _owner_alive(json.loads(job.detail or "{}").get("owner", "")):
                    job.status, job.updated = "interrupted", datetime.now(UTC)
        self._thread = threading.Thread(target=self._work, name="omniclinic-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)

    # -- requests --------------------------------------------------------------------------------
    def create_drafts(self, study_uids: list[str], formats: list[str], actor: Actor) -> Job:
        """A job drafting ``study_uids`` (all stored studies when empty) in ``formats``.

        Raises:
            StudyNotFound: a UID that names no stored study.
            JobRejected: too many studies, none stored, or an unknown format.
        """
        try:
            options = DraftOptions(formats=tuple(dict.fromkeys(formats)))
        except ValueError as exc:
            raise JobRejected(str(exc)) from None
        uids = sorted(set(study_uids))
        for uid in uids:
            self.studies.get(uid)
        if not uids:
            from app.models import Study

            with Session(self.engine) as session:
                uids = sorted(session.scalars(select(Study.study_uid)))
            if not uids:
                raise JobRejected("no studies are stored")
        if len(uids) > MAX_JOB_STUDIES:
            raise JobRejected(f"a job takes at most {MAX_JOB_STUDIES} studies; give study_uids")
        detail = {"formats": list(options.formats), "study_uids": uids, "outcomes": [], "owner": OWNER}
        job = Job(
            kind=DRAFT_JOB, status="queued", created_by=actor.username, total=len(uids), detail=json.dumps(detail)
        )
        with unit_of_work(self.engine) as session:
            session.add(job)
            session.flush()
            session.expunge(job)
        self._queue.put((job.id, actor))
        return job

    def resume(self, job_id: str, actor: Actor) -> Job:
        job = self.get(job_id)
        if job.status in ("queued", "running"):
            raise JobConflict("the job is queued or running already")
        self._set(job_id, status="queued", owner=OWNER)
        self._queue.put((job_id, actor))
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with Session(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise StudyNotFound("no job with that id")
            session.expunge(job)
        return job

    def list(self) -> list[Job]:
        with Session(self.engine) as session:
            jobs = list(session.scalars(select(Job).order_by(Job.created.desc()).limit(200)))
            session.expunge_all()
        return jobs

    def output_file(self, job_id: str, study_uid: str, name: str) -> Path:
        """A drafted file of the job; ``name`` is one of the format file names.

        Raises:
            StudyNotFound: no such job, study in it, file name, or file (not drafted, or failed).
        """
        job = self.get(job_id)
        if study_uid not in json.loads(job.detail).get("study_uids", []) or name not in FILE_NAMES.values():
            raise StudyNotFound("no such file in the job")
        self.studies.get(study_uid)  # a deleted study's drafts are not served (and were deleted with it)
        path = self.jobs_dir / job.id / study_key(study_uid) / name
        if not (path.parent / "done.json").is_file() or not path.is_file():
            raise StudyNotFound("that study has no such drafted file (yet)")
        return path

    # -- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            job_id, actor = entry
            try:
                self._run(job_id, actor)
            except Exception as exc:  # the job fails as a whole (the audit trail, the disk); the server goes on
                logger.error("job failed (%s)", type(exc).__name__)
                self._set(job_id, status="failed", error=f"the job stopped: {type(exc).__name__}")

    def _run(self, job_id: str, actor: Actor) -> None:
        job = self.get(job_id)
        detail = json.loads(job.detail)
        self._set(job_id, status="running", done=0, failed=0)
        source = StoredSource(self.studies, detail["study_uids"])
        out = self.jobs_dir / job.id
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        drafter = Drafter(
            self.assistant,
            out,
            DraftOptions(formats=tuple(detail["formats"])),
            audit_engine=self.engine,
            actor=actor,
            job=job.id,
            on_report=lambda item, text: self._add_report(item, text, actor),
        )
        drafter.run(source, source.worklist(), progress=self._progress(job_id))
        self._set(job_id, status="finished")

    def _progress(self, job_id: str) -> Any:
        def update_job(summary: ShardSummary) -> None:
            with unit_of_work(self.engine) as session:
                job = session.get(Job, job_id)
                if job is None:
                    return
                detail = json.loads(job.detail)
                detail["outcomes"] = [asdict(outcome) for outcome in summary.outcomes]
                job.detail = json.dumps(detail)
                job.done = sum(o.status in ("drafted", "skipped") for o in summary.outcomes)
                job.failed = summary.count("failed")
                job.updated = datetime.now(UTC)

        return update_job

    def _add_report(self, item: WorkItem, text: str, actor: Actor) -> None:
        from app.models import Study

        with unit_of_work(self.engine) as session:
            if session.get(Study, item.study_instance_uid) is None:
                raise StudyFailed("the study was deleted while it was drafted")
            session.add(
                Report(
                    study_uid=item.study_instance_uid,
                    status="draft",
                    model_name=self.assistant.info.name,
                    draft_text=text,
                    drafted_by=actor.username,
                )
            )

    def _set(self, job_id: str, **values: Any) -> None:
        error, owner = values.pop("error", None), values.pop("owner", None)
        with unit_of_work(self.engine) as session:
            job = session.get(Job, job_id)
            if job is None:
                return
            for name, value in values.items():
                setattr(job, name, value)
            if error is not None or owner is not None:
                detail = json.loads(job.detail)
                detail.update({"error": error} if error is not None else {"owner": owner, "error": None})
                job.detail = json.dumps(detail)
            job.updated = datetime.now(UTC)
