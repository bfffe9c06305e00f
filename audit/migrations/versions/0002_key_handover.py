"""A checkpoint may hand the log over to a new signing key (``omniclinic audit rotate-key``).

Revision ID: 0002_key_handover
Revises: 0001_audit_log
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_key_handover"
down_revision = "0001_audit_log"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.add_column(sa.Column("next_public_key", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.drop_column("next_public_key")
