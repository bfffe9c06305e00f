"""Recompute the whole log: every leaf, every link, every signed checkpoint. Read only."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.checkpoints import CheckpointInfo, load_public_pem, signature_valid
from audit.events import COLUMNS, GENESIS_HASH, canonical_bytes
from audit.merkle import CompactRange, consistency_path, leaf_hash, verify_consistency
from audit.models import AuditCheckpoint, AuditEvent

BATCH = 5000


@dataclass(frozen=True)
class Failure:
    seq: int | None
    """The first event that fails, or None for a failure of the log as a whole (a checkpoint)."""
    reason: str


@dataclass
class VerifyReport:
    events: int = 0
    checkpoints: int = 0
    signatures_checked: bool = False
    uncovered: int = 0
    """Events after the last checkpoint: intact as a chain, but a deleted tail there would go unseen."""
    root: str = ""
    failures: list[Failure] = field(default_factory=list)
    witness_checked: bool = False
    """A checkpoint kept outside the database was proved to be a prefix of this log."""
    consistency_proof: list[str] = field(default_factory=list)
    """The RFC 9162 consistency proof from the kept checkpoint's tree to this log's (hex)."""

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def first_failure(self) -> Failure | None:
        return self.failures[0] if self.failures else None


def verify_log(
    *, session: Session, public_key: Ed25519PublicKey | None = None, witness: CheckpointInfo | None = None
) -> VerifyReport:
    """Check every event's hash and link, every checkpoint's root and signature, and a kept checkpoint.

    Detects a changed column (the leaf hash no longer matches), a deleted, inserted or reordered
    event (a gap in ``seq`` or a broken ``prev_hash`` link), a rewritten history (the root differs
    from a signed checkpoint) and a truncated log (a checkpoint larger than the log). With
    ``witness`` (a checkpoint kept outside the database) it also proves, with an RFC 9162 consistency
    proof, that the log still holds the witnessed tree: a log rewritten wholesale, its hashes, links
    and checkpoint rows recomputed or deleted, fails here. Signatures follow key hand-overs from
    ``public_key``; the witness must be signed by one of the keys of that chain.
    """
    report = VerifyReport(signatures_checked=public_key is not None)
    checkpoints = list(session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size)))
    keys = [public_key] if public_key is not None else []
    leaves: list[bytes] | None = [] if witness is not None else None
    pending = iter(checkpoints)
    next_checkpoint = next(pending, None)
    tree = CompactRange()
    previous = GENESIS_HASH
    columns = [getattr(AuditEvent, name) for name in COLUMNS]
    rows = session.execute(select(*columns).order_by(AuditEvent.seq).execution_options(yield_per=BATCH))
    for row in rows:
        event = dict(zip(COLUMNS, row, strict=True))
        seq = event["seq"]
        if seq != tree.size:
            report.failures.append(Failure(tree.size, f"events {tree.size} to {seq - 1} are missing (deleted)"))
            return _finish(report, tree)
        if event["prev_hash"] != previous:
            report.failures.append(
                Failure(seq, "does not link to the event before it (inserted, deleted or reordered)")
            )
            return _finish(report, tree)
        recomputed = leaf_hash(canonical_bytes(event))
        if recomputed.hex() != event["leaf_hash"]:
            report.failures.append(Failure(seq, "its content changed after it was recorded"))
            return _finish(report, tree)
        tree.append(recomputed)
        if leaves is not None:
            leaves.append(recomputed)
        previous = event["leaf_hash"]
        while next_checkpoint is not None and next_checkpoint.tree_size == tree.size:
            _check_checkpoint(report, next_checkpoint, tree, keys[-1] if keys else None)
            if not report.ok:
                return _finish(report, tree)
            if next_checkpoint.next_public_key and keys:
                keys.append(load_public_pem(next_checkpoint.next_public_key.encode()))
            next_checkpoint = next(pending, None)
    if next_checkpoint is not None:
        report.failures.append(
            Failure(
                None,
                f"a checkpoint was signed for {next_checkpoint.tree_size} events but "
                f"the log holds {tree.size}: events were deleted from its end",
            )
        )
    report.uncovered = tree.size - (checkpoints[-1].tree_size if checkpoints else 0)
    if witness is not None and report.ok:
        if not any(CheckpointInfo.of(row) == witness for row in checkpoints):
            report.failures.append(
                Failure(
                    None,
                    f"the kept checkpoint of {witness.tree_size} events is not among the database's checkpoints "
                    "(checkpoint rows were deleted or replaced)",
                )
            )
            return _finish(report, tree)
        _check_witness(report, witness, leaves or [], tree, keys)
    return _finish(report, tree)


def _check_witness(
    report: VerifyReport, witness: CheckpointInfo, leaves: list[bytes], tree: CompactRange, keys: list[Ed25519PublicKey]
) -> None:
    if keys and not any(signature_valid(witness, key) for key in keys):
        report.failures.append(Failure(None, "the kept checkpoint is not signed by this log's key"))
        return
    if witness.tree_size > tree.size:
        report.failures.append(
            Failure(
                None,
                f"the kept checkpoint covers {witness.tree_size} events but the log holds {tree.size}: "
                "events were deleted or the log replaced",
            )
        )
        return
    path = consistency_path(leaves, witness.tree_size)
    if not verify_consistency(witness.tree_size, tree.size, bytes.fromhex(witness.root_hash), tree.root(), path):
        report.failures.append(
            Failure(
                None,
                f"the log no longer contains the {witness.tree_size} events of the kept checkpoint "
                "(history rewritten or replaced)",
            )
        )
        return
    report.witness_checked = True
    report.consistency_proof = [node.hex() for node in path]


def _check_checkpoint(
    report: VerifyReport, checkpoint: AuditCheckpoint, tree: CompactRange, public_key: Ed25519PublicKey | None
) -> None:
    if checkpoint.root_hash != tree.root().hex():
        report.failures.append(
            Failure(
                None,
                f"the first {checkpoint.tree_size} events do not match the checkpoint "
                "signed for them (history rewritten)",
            )
        )
    elif public_key is not None and not signature_valid(checkpoint, public_key):
        report.failures.append(
            Failure(None, f"the checkpoint at {checkpoint.tree_size} events is not signed by this log's key")
        )
    else:
        report.checkpoints += 1


def _finish(report: VerifyReport, tree: CompactRange) -> VerifyReport:
    report.events = tree.size
    report.root = tree.root().hex()
    return report
