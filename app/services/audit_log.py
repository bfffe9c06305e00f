"""Reading the audit trail for auditors: events, verification, FHIR export (each use is itself recorded)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.core.config import Settings


def first_signing_key(engine: Engine, settings: Settings) -> Any:
    """The data folder's public key that signed the log's first checkpoint (a rotated log's chain starts
    there: ``rotate-key`` keeps retired public keys beside the current one); the current one otherwise.

    Raises:
        SigningKeyError: a key file in the data folder is unreadable.
    """
    from audit import load_public_key
    from audit.checkpoints import key_id, public_path, retired_public_paths
    from audit.models import AuditCheckpoint

    keys = {}
    for path in [public_path(settings.audit_key_path), *retired_public_paths(settings.audit_key_path)]:
        if path.exists():
            key = load_public_key(path)
            keys[key_id(key)] = key
    with Session(engine) as session:
        first = session.scalar(select(AuditCheckpoint.key_id).order_by(AuditCheckpoint.tree_size).limit(1))
    if first in keys:
        return keys[first]
    return next(iter(keys.values()), None)


def witness(settings: Settings) -> Any:
    """The checkpoint kept outside the database, or None."""
    from audit.checkpoints import CheckpointInfo

    path = settings.audit_witness_path
    return CheckpointInfo.from_json(path.read_text(encoding="utf-8")) if path.exists() else None
