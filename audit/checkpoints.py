"""Signed checkpoints (tree heads): tree size, Merkle root and time, signed with Ed25519.

A checkpoint commits to every event before it: rewriting, deleting or truncating any of them
changes the root, and a new root cannot be signed without the private key. Keep a copy of the
public key (and, ideally, of the checkpoints) where the database's administrators cannot change it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.merkle import CompactRange
from audit.models import AuditCheckpoint, AuditEvent
from audit.store import lock_log

MESSAGE_PREFIX = b"omniclinic-audit-checkpoint/v1\n"


class SigningKeyError(RuntimeError):
    """The signing key file is missing, unreadable, too permissive or not an Ed25519 key."""


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key at ``path`` (PEM), generated with mode 0600 on first use.

    The public key is written beside it (``.pub.pem``) for auditors.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if os.stat(path).st_mode & 0o077:
            raise SigningKeyError(f"{path} is readable by other users; run: chmod 600 {path}") from None
        return _load_private(path.read_bytes())
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    public_path(path).write_bytes(public_pem(key.public_key()))
    return key


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.stem + ".pub.pem")


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_private(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError("the signing key file is not a readable PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError("the signing key is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key from a public PEM, or the public half of a private PEM."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return _load_private(data).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise SigningKeyError(f"{path} is not a readable PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def checkpoint_message(tree_size: int, root_hex: str, created: datetime) -> bytes:
    stamp = created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return MESSAGE_PREFIX + f"{tree_size}\n{root_hex}\n{stamp}\n".encode()


def signature_valid(checkpoint: AuditCheckpoint, key: Ed25519PublicKey) -> bool:
    try:
        key.verify(
            bytes.fromhex(checkpoint.signature),
            checkpoint_message(checkpoint.tree_size, checkpoint.root_hash, checkpoint.created),
        )
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class CheckpointInfo:
    tree_size: int
    root_hash: str
    created: datetime
    key_id: str
    signature: str
    new: bool


def create_checkpoint(*, session: Session, signing_key: Ed25519PrivateKey) -> CheckpointInfo | None:
    """Sign the current tree head, hashing only the events since the last checkpoint.

    Returns None for an empty log, and the last checkpoint (``new=False``) when nothing was added.
    """
    lock_log(session)
    last = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1)).first()
    tree = CompactRange(last.tree_size, map(bytes.fromhex, json.loads(last.frontier))) if last else CompactRange()
    for leaf in session.scalars(
        select(AuditEvent.leaf_hash).where(AuditEvent.seq >= tree.size).order_by(AuditEvent.seq)
    ):
        tree.append(bytes.fromhex(leaf))
    if tree.size == 0:
        return None
    if last is not None and tree.size == last.tree_size:
        return CheckpointInfo(last.tree_size, last.root_hash, last.created, last.key_id, last.signature, False)
    root = tree.root().hex()
    created = datetime.now(UTC)
    signature = signing_key.sign(checkpoint_message(tree.size, root, created)).hex()
    identifier = key_id(signing_key.public_key())
    session.add(
        AuditCheckpoint(
            tree_size=tree.size,
            root_hash=root,
            created=created,
            key_id=identifier,
            signature=signature,
            frontier=json.dumps([h.hex() for h in tree.subtrees]),
        )
    )
    session.flush()
    return CheckpointInfo(tree.size, root, created, identifier, signature, True)
