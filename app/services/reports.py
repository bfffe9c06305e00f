"""Report drafts: the model writes one for a study, a clinician edits it and signs it off.

The draft, the edits and the signed text are all kept, so they can feed retraining
(``export_conversations`` writes signed reports in the training conversation format).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.models import Report, Study
from app.services.asking import AskRejected, model_call
from app.services.assistant import Assistant, Delta
from app.services.auditing import Actor, record_access
from app.services.drafting import split_sections, technique_text
from app.services.studies import StudyNotFound, StudyStore, main_series
from audit import Action, unit_of_work
from medical_data.report_formats import DRAFT_REQUEST

MAX_REPORT_CHARS = 20_000


class ReportConflict(ValueError):
    """A change a report's state does not allow (editing or signing a signed report)."""


class ReportService:
    def __init__(self, engine: Engine, studies: StudyStore, assistant: Assistant) -> None:
        self.engine, self.studies, self.assistant = engine, studies, assistant

    def draft(self, study_uid: str, actor: Actor) -> Report:
        """A new draft by the model, in the batch drafts' form: it names the model, says it is a draft, and
        carries the caution."""
        from medical_data.dicom_io import read_dicom
        from medical_data.report_formats import ReportDraft, as_text

        study = self.studies.get(study_uid)
        image = self.studies.volume(study)
        written = "".join(
            piece.text
            for piece in self.assistant.stream_answer(image, [], DRAFT_REQUEST, speak=False)
            if isinstance(piece, Delta)
        ).strip()
        info = self.assistant.info
        refs = self.studies.stored_scan(study).studies[study_uid]
        shown = main_series(self.studies.series(study))
        header = read_dicom(shown.instances[0].path, stop_before_pixels=True) if shown else {}
        findings, impression = split_sections(written)
        text = as_text(
            ReportDraft(study_uid, "", technique_text(refs, header), findings, impression, info.name, info.caution)
        )
        report = Report(
            study_uid=study_uid, status="draft", model_name=info.name, draft_text=text, drafted_by=actor.username
        )
        with unit_of_work(self.engine) as session:
            session.add(report)
            session.flush()
            record_access(
                session,
                actor,
                action=Action.CREATE,
                type_code="110103",
                studies=[study_uid],
                entities=(),
                details=model_call(info, DRAFT_REQUEST, image, None, written),
            )
            session.expunge(report)
        return report

    def get(self, report_id: str, actor: Actor) -> Report:
        with unit_of_work(self.engine) as session:
            report = session.get(Report, report_id)
            if report is None:
                raise StudyNotFound("no report with that id")
            record_access(session, actor, action=Action.READ, type_code="110103", studies=[report.study_uid])
            session.expunge(report)
        return report

    def for_study(self, study_uid: str, actor: Actor) -> list[Report]:
        self.studies.get(study_uid)
        with unit_of_work(self.engine) as session:
            reports = list(
                session.scalars(select(Report).where(Report.study_uid == study_uid).order_by(Report.drafted))
            )
            record_access(session, actor, action=Action.READ, type_code="110103", studies=[study_uid])
            session.expunge_all()
        return reports

    def edit(self, report_id: str, text: str, actor: Actor) -> Report:
        if not text.strip() or len(text) > MAX_REPORT_CHARS:
            raise AskRejected(422, f"a report's text must be 1 to {MAX_REPORT_CHARS} characters")
        with unit_of_work(self.engine) as session:
            report = self._open(session, report_id)
            report.edited_text, report.status = text, "edited"
            report.edited_by, report.edited = actor.username, datetime.now(UTC)
            record_access(session, actor, action=Action.UPDATE, type_code="110103", studies=[report.study_uid])
            session.flush()
            session.expunge(report)
        return report

    def sign(self, report_id: str, actor: Actor) -> Report:
        """Sign the text as it stands (the edit, or the draft when unedited); a signed report is final."""
        with unit_of_work(self.engine) as session:
            report = self._open(session, report_id)
            report.signed_text = report.edited_text or report.draft_text
            report.status, report.signed_by, report.signed = "signed", actor.username, datetime.now(UTC)
            record_access(
                session,
                actor,
                action=Action.UPDATE,
                type_code="110103",
                studies=[report.study_uid],
                details={"activity": "report signed"},
            )
            session.flush()
            session.expunge(report)
        return report

    @staticmethod
    def _open(session: Session, report_id: str) -> Report:
        report = session.get(Report, report_id)
        if report is None:
            raise StudyNotFound("no report with that id")
        if report.status == "signed":
            raise ReportConflict("the report is signed; it can no longer change")
        return report

    def export_conversations(self, actor: Actor) -> str:
        """Signed reports as training conversations, JSON lines ("Describe the findings." about the middle
        image of the study's main series, answered with the signed text; image paths are absolute files
        on this server). The export is audited."""
        import json

        from training.conversations import ContentPart, Conversation, Turn

        with Session(self.engine) as session:
            rows = session.execute(
                select(Report, Study).join(Study, Report.study_uid == Study.study_uid).where(Report.status == "signed")
            ).all()
        conversations: list[Any] = []
        for report, study in rows:
            series = self.studies.series(study)
            if not series:
                continue
            middle = sorted(series[0].instances, key=lambda i: i.instance_number or 0)[len(series[0].instances) // 2]
            conversations.append(
                Conversation(
                    turns=(
                        Turn(
                            "user",
                            (ContentPart("image", str(middle.path)), ContentPart("text", "Describe the findings.")),
                        ),
                        Turn("assistant", (ContentPart("text", report.signed_text or ""),)),
                    ),
                    id=f"report-{report.id}",
                    group=study.study_uid,
                )
            )
        with unit_of_work(self.engine) as session:
            record_access(
                session,
                actor,
                action=Action.READ,
                type_code="110106",
                studies=sorted({study.study_uid for _, study in rows}),
                details={"activity": "signed reports exported as conversations", "count": len(conversations)},
            )
        return "".join(json.dumps(c.to_json(), ensure_ascii=False) + "\n" for c in conversations)
