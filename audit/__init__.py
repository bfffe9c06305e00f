"""Tamper-evident audit trail of every access to patient data. Depends on SQLAlchemy only.

Append with ``record`` inside a ``unit_of_work``; sign tree heads with ``create_checkpoint``;
recompute everything with ``verify_log``. There is no update or delete path.
"""

from audit.checkpoints import create_checkpoint, load_or_create_signing_key, load_public_key
from audit.events import Action, Agent, AuditError, Entity, ModelCall, Outcome, Source, record, sha256_hex
from audit.query import inclusion_proof, list_events
from audit.store import create_audit_engine, unit_of_work, upgrade_database
from audit.verify import VerifyReport, verify_log

__all__ = [
    "Action",
    "Agent",
    "AuditError",
    "Entity",
    "ModelCall",
    "Outcome",
    "Source",
    "VerifyReport",
    "create_audit_engine",
    "create_checkpoint",
    "inclusion_proof",
    "list_events",
    "load_or_create_signing_key",
    "load_public_key",
    "record",
    "sha256_hex",
    "unit_of_work",
    "upgrade_database",
    "verify_log",
]
