"""Audit events and signed checkpoints.

Revision ID: 0001_audit_log
Revises:
"""

import sqlalchemy as sa
from alembic import op

from audit.models import UTCDateTime

revision = "0001_audit_log"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("recorded", UTCDateTime(), nullable=False),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("type_system", sa.String(128), nullable=False),
        sa.Column("type_code", sa.String(64), nullable=False),
        sa.Column("type_display", sa.String(128), nullable=False),
        sa.Column("outcome", sa.SmallInteger(), nullable=False),
        sa.Column("agent_user", sa.String(128), nullable=False),
        sa.Column("agent_role", sa.String(64), nullable=False),
        sa.Column("agent_requestor", sa.Boolean(), nullable=False),
        sa.Column("source_node", sa.String(128), nullable=False),
        sa.Column("source_address", sa.String(64), nullable=False),
        sa.Column("patient_pseudonym", sa.String(64), nullable=False),
        sa.Column("entities", sa.Text(), nullable=False),
        sa.Column("purpose_of_use", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("leaf_hash", sa.String(64), nullable=False),
        sa.CheckConstraint("action IN ('C', 'R', 'U', 'D', 'E')", name="ck_audit_events_action"),
        sa.CheckConstraint("outcome IN (0, 4, 8, 12)", name="ck_audit_events_outcome"),
        sa.CheckConstraint("seq >= 0", name="ck_audit_events_seq"),
    )
    op.create_index("ix_audit_events_recorded", "audit_events", ["recorded"])
    op.create_index("ix_audit_events_agent_user", "audit_events", ["agent_user"])
    op.create_index("ix_audit_events_patient", "audit_events", ["patient_pseudonym"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("frontier", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_audit_events_patient", "audit_events")
    op.drop_index("ix_audit_events_agent_user", "audit_events")
    op.drop_index("ix_audit_events_recorded", "audit_events")
    op.drop_table("audit_events")
