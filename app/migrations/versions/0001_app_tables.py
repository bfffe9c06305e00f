"""Users, studies, conversations, turns, reports, jobs.

Revision ID: 0001_app_tables
Revises:
"""

import sqlalchemy as sa
from alembic import op

from audit.models import UTCDateTime

revision = "0001_app_tables"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "app_users",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("credentials_changed", UTCDateTime(), nullable=False),
        sa.CheckConstraint("role IN ('clinician', 'researcher', 'auditor', 'admin')", name="ck_app_users_role"),
    )
    op.create_table(
        "app_studies",
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("folder", sa.String(36), nullable=False, unique=True),
        sa.Column("uploaded_by", sa.String(64), nullable=False),
        sa.Column("uploaded", UTCDateTime(), nullable=False),
        sa.Column("deidentified", sa.Boolean(), nullable=False),
        sa.Column("modalities", sa.String(64), nullable=False),
        sa.Column("description", sa.String(256), nullable=False),
        sa.Column("series_count", sa.Integer(), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
    )
    op.create_table(
        "app_conversations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "study_uid", sa.String(64), sa.ForeignKey("app_studies.study_uid", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "app_turns",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.String(36),
            sa.ForeignKey("app_conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("spoken", sa.Boolean(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("has_audio", sa.Boolean(), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_app_turns_conversation", "app_turns", ["conversation_id", "position"], unique=True)
    op.create_table(
        "app_reports",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "study_uid", sa.String(64), sa.ForeignKey("app_studies.study_uid", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("draft_text", sa.Text(), nullable=False),
        sa.Column("edited_text", sa.Text(), nullable=True),
        sa.Column("signed_text", sa.Text(), nullable=True),
        sa.Column("drafted_by", sa.String(64), nullable=False),
        sa.Column("drafted", UTCDateTime(), nullable=False),
        sa.Column("edited_by", sa.String(64), nullable=True),
        sa.Column("edited", UTCDateTime(), nullable=True),
        sa.Column("signed_by", sa.String(64), nullable=True),
        sa.Column("signed", UTCDateTime(), nullable=True),
        sa.CheckConstraint("status IN ('draft', 'edited', 'signed')", name="ck_app_reports_status"),
    )
    op.create_table(
        "app_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("updated", UTCDateTime(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    for table in ("app_jobs", "app_reports", "app_turns", "app_conversations", "app_studies", "app_users"):
        op.drop_table(table)
