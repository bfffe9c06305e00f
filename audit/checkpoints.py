"""Signed checkpoints (tree heads): tree size, Merkle root and time, signed with Ed25519.

A checkpoint commits to every event before it: rewriting, deleting or truncating any of them
changes the root, and a new root cannot be signed without the private key. The checkpoints table
lives in the database its administrators control, so a copy of a checkpoint is kept outside it (a
witness: ``CheckpointInfo.to_json``, written by ``omniclinic audit checkpoint --out`` and kept in
the data folder): ``verify_log(witness=...)`` proves with an RFC 9162 consistency proof that the log
still contains the witnessed tree, even after every checkpoint row was deleted, and a new checkpoint
is signed only when the log is consistent with the last one and with the witness.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
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
from omniclinic_common.files import PrivateFileError, create_private_file, read_private_file

MESSAGE_PREFIX = b"omniclinic-audit-checkpoint/v1\n"


class SigningKeyError(RuntimeError):
    """The signing key file is missing, unreadable, too permissive or not an Ed25519 key."""


class CheckpointRefused(RuntimeError):
    """A checkpoint was not signed: the log or its last checkpoint does not check out (a message says why)."""


class CheckpointFileError(ValueError):
    """A witness file that is not a checkpoint this code wrote."""


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key at ``path`` (PEM), generated with mode 0600 on first use.

    The public key is written beside it (``.pub.pem``) for auditors. A key is generated only when
    neither half exists: a missing private key beside an existing public key is an error, never a
    silent new key that would overwrite the public key auditors verify with.
    """
    if not path.exists() and public_path(path).exists():
        raise SigningKeyError(
            f"the audit signing key {path} is missing but its public key {public_path(path)} exists: restore the "
            f"key from your backup. If it is lost for good, move {public_path(path).name} aside (keep it: earlier "
            "checkpoints verify with it) and a new key will be made; the log then starts a new chain of trust"
        )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        created = create_private_file(path, pem)
        if not created:
            key = _load_private(read_private_file(path))
    except PrivateFileError as exc:
        raise SigningKeyError(str(exc)) from None
    if not created:
        return key
    public_path(path).write_bytes(public_pem(key.public_key()))
    return key


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.stem + ".pub.pem")


def retired_public_path(private_path: Path, retired_key_id: str) -> Path:
    """Where ``rotate-key`` keeps a retired key's public half, beside the current one."""
    return private_path.with_name(f"{private_path.stem}.{retired_key_id}.pub.pem")


def retired_public_paths(private_path: Path) -> list[Path]:
    """Every retired public key kept beside ``private_path``, in name order."""
    return sorted(private_path.parent.glob(f"{private_path.stem}.*.pub.pem"))


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
        return load_public_pem(data)
    except SigningKeyError:
        raise SigningKeyError(f"{path} is not a readable Ed25519 PEM public key") from None


def load_public_pem(data: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise SigningKeyError("not a readable PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError("not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def checkpoint_message(tree_size: int, root_hex: str, created: datetime, next_public_key: str = "") -> bytes:
    stamp = created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    message = MESSAGE_PREFIX + f"{tree_size}\n{root_hex}\n{stamp}\n".encode()
    if next_public_key:  # a hand-over: the old key vouches for the new one
        message += b"next-key\n" + next_public_key.encode()
    return message


def signature_valid(checkpoint: AuditCheckpoint | CheckpointInfo, key: Ed25519PublicKey) -> bool:
    if checkpoint.key_id != key_id(key):
        return False
    try:
        key.verify(
            bytes.fromhex(checkpoint.signature),
            checkpoint_message(
                checkpoint.tree_size, checkpoint.root_hash, checkpoint.created, checkpoint.next_public_key
            ),
        )
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class CheckpointInfo:
    """A signed tree head, as kept by a witness outside the database."""

    tree_size: int
    root_hash: str
    created: datetime
    key_id: str
    signature: str
    new: bool = False
    next_public_key: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": "omniclinic-audit-checkpoint/v1",
                "tree_size": self.tree_size,
                "root_hash": self.root_hash,
                "created": self.created.astimezone(UTC).isoformat(),
                "key_id": self.key_id,
                "signature": self.signature,
                "next_public_key": self.next_public_key,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> CheckpointInfo:
        """Parse a witness file.

        Raises:
            CheckpointFileError: not JSON, another format, or a field of the wrong kind.
        """
        try:
            data = json.loads(text)
            if data.get("format") != "omniclinic-audit-checkpoint/v1":
                raise CheckpointFileError("not an omniclinic audit checkpoint file")
            tree_size, root_hash = data["tree_size"], data["root_hash"]
            if not isinstance(tree_size, int) or tree_size < 1 or len(bytes.fromhex(root_hash)) != 32:
                raise CheckpointFileError("the checkpoint file's tree size or root is malformed")
            return cls(
                tree_size,
                root_hash,
                datetime.fromisoformat(data["created"]),
                str(data["key_id"]),
                str(data["signature"]),
                False,
                str(data.get("next_public_key", "")),
            )
        except CheckpointFileError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointFileError(f"the checkpoint file is malformed ({type(exc).__name__})") from None

    @classmethod
    def of(cls, row: AuditCheckpoint, new: bool = False) -> CheckpointInfo:
        return cls(row.tree_size, row.root_hash, row.created, row.key_id, row.signature, new, row.next_public_key)


def create_checkpoint(
    *,
    session: Session,
    signing_key: Ed25519PrivateKey,
    witness: CheckpointInfo | None = None,
    next_key: Ed25519PublicKey | None = None,
    retired_keys: Sequence[Ed25519PublicKey] = (),
) -> CheckpointInfo | None:
    """Sign the current tree head, hashing only the events since the last checkpoint.

    Before signing: the last checkpoint must verify with ``signing_key`` (or hand over to it), its
    stored frontier must give its signed root, every newer event must hash to its stored leaf and
    link to the one before, and the log must be consistent with ``witness`` (a checkpoint kept
    outside the database), checked in full when the database's last checkpoint is not that one.

    Args:
        next_key: sign a hand-over to this key (``rotate-key``): later checkpoints are signed with it.
        retired_keys: earlier signing keys; a hand-over to ``signing_key`` must verify with one of them.

    Returns:
        None for an empty log; the last checkpoint (``new=False``) when nothing was added.

    Raises:
        CheckpointRefused: any of the checks above failed; nothing is signed.
    """
    from audit.verify import verify_log  # verify builds on this module

    lock_log(session)
    public = signing_key.public_key()
    last = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1)).first()
    if last is not None and not _signed_by_or_for(last, public, retired_keys):
        raise CheckpointRefused(
            f"the last checkpoint ({last.tree_size} events) does not verify with this log's signing key; "
            "run `omniclinic audit verify` and investigate before signing again"
        )
    if witness is not None and (last is None or CheckpointInfo.of(last) != witness):
        report = verify_log(session=session, witness=witness)
        if not report.ok:
            raise CheckpointRefused(
                f"the log is not consistent with the kept checkpoint: {report.first_failure.reason}"
            )
    tree = CompactRange(last.tree_size, map(bytes.fromhex, json.loads(last.frontier))) if last else CompactRange()
    if last is not None and tree.root().hex() != last.root_hash:
        raise CheckpointRefused("the stored frontier of the last checkpoint does not give its signed root")
    _extend_checked(session, tree)
    if tree.size == 0:
        return None
    if last is not None and tree.size == last.tree_size:
        if next_key is not None:
            raise CheckpointRefused("a hand-over needs an event after the last checkpoint (record the rotation first)")
        return CheckpointInfo.of(last)
    root = tree.root().hex()
    created = datetime.now(UTC)
    handover = public_pem(next_key).decode() if next_key is not None else ""
    signature = signing_key.sign(checkpoint_message(tree.size, root, created, handover)).hex()
    identifier = key_id(public)
    frontier = json.dumps([h.hex() for h in tree.subtrees])
    session.add(
        AuditCheckpoint(
            tree_size=tree.size,
            root_hash=root,
            created=created,
            key_id=identifier,
            signature=signature,
            frontier=frontier,
            next_public_key=handover,
        )
    )
    session.flush()
    return CheckpointInfo(tree.size, root, created, identifier, signature, True, handover)


def checkpoint_due(*, session: Session, every_events: int, every_seconds: float) -> bool:
    """Whether ``every_events`` events were added since the last checkpoint, or any were and it is
    ``every_seconds`` old (a log with no checkpoint yet is due as soon as it holds an event)."""
    head = session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1))  # the key's index
    size = 0 if head is None else head + 1  # not count(*): a full scan of the log after every event
    last = session.execute(
        select(AuditCheckpoint.tree_size, AuditCheckpoint.created).order_by(AuditCheckpoint.tree_size.desc()).limit(1)
    ).first()
    if last is None:
        return size > 0
    added = size - last.tree_size
    age = (datetime.now(UTC) - last.created).total_seconds()
    return added >= every_events or (added > 0 and age >= every_seconds)


def _signed_by_or_for(checkpoint: AuditCheckpoint, key: Ed25519PublicKey, retired: Sequence[Ed25519PublicKey]) -> bool:
    """Signed with ``key``, or a hand-over that names ``key`` as the next and verifies with a retired key."""
    if checkpoint.next_public_key:
        names_us = checkpoint.next_public_key.encode() == public_pem(key)
        return names_us and any(signature_valid(checkpoint, old) for old in retired)
    return signature_valid(checkpoint, key)


def _extend_checked(session: Session, tree: CompactRange) -> None:
    """Append the events after ``tree`` to it, each recomputed from its content and its link checked."""
    from audit.events import COLUMNS, GENESIS_HASH, canonical_bytes
    from audit.merkle import leaf_hash

    previous = GENESIS_HASH
    if tree.size:
        previous = session.scalar(select(AuditEvent.leaf_hash).where(AuditEvent.seq == tree.size - 1))
        if previous is None:
            raise CheckpointRefused(f"event {tree.size - 1}, covered by the last checkpoint, is missing")
    columns = [getattr(AuditEvent, name) for name in COLUMNS]
    for row in session.execute(select(*columns).where(AuditEvent.seq >= tree.size).order_by(AuditEvent.seq)):
        event = dict(zip(COLUMNS, row, strict=True))
        recomputed = leaf_hash(canonical_bytes(event)).hex()
        if (
            event["seq"] != tree.size
            or recomputed != event["leaf_hash"]
            or (previous is not None and event["prev_hash"] != previous)
        ):
            raise CheckpointRefused(f"event {event['seq']} was changed, moved or deleted; nothing was signed")
        tree.append(bytes.fromhex(recomputed))
        previous = recomputed
