"""The app's tables: users, stored studies, conversations and their turns, reports, jobs.

Kept apart from the audit tables (``audit.models``): their own metadata and their own Alembic
history (``app/migrations``, version table ``app_alembic_version``). Ids are generated here; nothing
a user typed (a file name, a question) is ever used as a key or a path.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from audit.models import UTCDateTime

ROLES = ("clinician", "researcher", "auditor", "admin")
REPORT_STATUSES = ("draft", "edited", "signed")


def new_id() -> str:
    return str(uuid.uuid4())


def now() -> datetime:
    return datetime.now(UTC)


class AppBase(DeclarativeBase):
    pass


class User(AppBase):
    __tablename__ = "app_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    credentials_changed: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    """Tokens issued before this moment (a new password, a disabled account) are refused."""


class Study(AppBase):
    __tablename__ = "app_studies"

    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    folder: Mapped[str] = mapped_column(String(36), unique=True)
    """A generated name under the data folder's ``studies/``."""
    uploaded_by: Mapped[str] = mapped_column(String(64))
    uploaded: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    deidentified: Mapped[bool] = mapped_column(Boolean)
    modalities: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(256), default="")
    series_count: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)


class Conversation(AppBase):
    __tablename__ = "app_conversations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    study_uid: Mapped[str] = mapped_column(String(64), ForeignKey("app_studies.study_uid", ondelete="CASCADE"))
    username: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class Turn(AppBase):
    __tablename__ = "app_turns"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(String(36), ForeignKey("app_conversations.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    spoken: Mapped[bool] = mapped_column(Boolean, default=False)
    answer: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(String(128))
    has_audio: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=now)


class Report(AppBase):
    """A report's life: the model's draft, the clinician's edits, the signed text (all kept)."""

    __tablename__ = "app_reports"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    study_uid: Mapped[str] = mapped_column(String(64), ForeignKey("app_studies.study_uid", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(8), default="draft")
    model_name: Mapped[str] = mapped_column(String(128))
    draft_text: Mapped[str] = mapped_column(Text)
    edited_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    signed_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    drafted_by: Mapped[str] = mapped_column(String(64))
    drafted: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    edited_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    edited: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    signed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    signed: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Job(AppBase):
    """A long-running piece of work (batch report drafting) and where it stands."""

    __tablename__ = "app_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    created_by: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    updated: Mapped[datetime] = mapped_column(UTCDateTime, default=now)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="{}")
