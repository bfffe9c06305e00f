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


def retired_keys(settings: Settings) -> list[Any]:
    """The public keys ``rotate-key`` retired into the data folder (unreadable ones are skipped)."""
    from audit import load_public_key
    from audit.checkpoints import SigningKeyError, retired_public_paths

    keys = []
    for path in retired_public_paths(settings.audit_key_path):
        try:
            keys.append(load_public_key(path))
        except (SigningKeyError, OSError):
            continue
    return keys


def sign_checkpoint(engine: Engine, settings: Settings, next_key: Any = None) -> Any:
    """Sign a checkpoint consistent with the kept one (the witness file), then keep it. Fails closed.

    Returns:
        The checkpoint (``CheckpointInfo``), or None for an empty log.

    Raises:
        SigningKeyError, CheckpointFileError, CheckpointRefused, OSError: it cannot be signed or kept.
    """
    from audit import create_checkpoint, load_or_create_signing_key, unit_of_work
    from omniclinic_common.files import write_atomically

    key = load_or_create_signing_key(settings.audit_key_path)
    kept = witness(settings)
    with unit_of_work(engine) as session:
        checkpoint = create_checkpoint(
            session=session, signing_key=key, witness=kept, next_key=next_key, retired_keys=retired_keys(settings)
        )
    if checkpoint is not None and checkpoint.new:
        write_atomically(settings.audit_witness_path, checkpoint.to_json() + "\n")
    return checkpoint


def checkpoint_if_due(engine: Engine, settings: Settings) -> Any:
    """Sign a checkpoint when the settings' event count or age says one is due; None otherwise."""
    from audit.checkpoints import checkpoint_due

    with Session(engine) as session:
        due = checkpoint_due(
            session=session,
            every_events=settings.audit_checkpoint_events,
            every_seconds=settings.audit_checkpoint_seconds,
        )
    return sign_checkpoint(engine, settings) if due else None
