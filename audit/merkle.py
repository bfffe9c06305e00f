"""RFC 6962 / RFC 9162 Merkle tree hashing: leaf and node hashes, roots, inclusion proofs.

Written here (about a hundred lines) because no maintained Python package offers RFC 9162 hashing
with incremental roots and proof verification without pulling in a whole transparency-log server.
Checked against the RFC's published test vectors in the tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class CompactRange:
    """The right edge of a growing tree: the roots of its perfect subtrees, largest first.

    Appending a leaf is O(log n) amortised and the root is O(log n), so a log can keep its tree head
    current without rereading old leaves. The root equals RFC 6962's MTH for any size.
    """

    def __init__(self, size: int = 0, subtrees: Iterable[bytes] = ()) -> None:
        self.size = size
        self.subtrees = list(subtrees)
        if len(self.subtrees) != bin(size).count("1"):
            raise ValueError("a compact range needs one subtree per set bit of its size")

    def append(self, leaf: bytes) -> None:
        self.subtrees.append(leaf)
        self.size += 1
        merges = (self.size & -self.size).bit_length() - 1  # trailing zeros: equal-size subtrees to merge
        for _ in range(merges):
            right = self.subtrees.pop()
            left = self.subtrees.pop()
            self.subtrees.append(node_hash(left, right))

    def root(self) -> bytes:
        if not self.subtrees:
            return EMPTY_ROOT
        root = self.subtrees[-1]
        for left in reversed(self.subtrees[:-1]):
            root = node_hash(left, root)
        return root


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over already-hashed leaves."""
    tree = CompactRange()
    for leaf in leaves:
        tree.append(leaf)
    return tree.root()


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (size > 1)."""
    return 1 << ((size - 1).bit_length() - 1)


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 6962 section 2.1.1, over hashed leaves."""
    if not 0 <= index < len(leaves):
        raise ValueError("leaf index outside the tree")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_path(leaves[:k], index), merkle_root(leaves[k:])]
    return [*inclusion_path(leaves[k:], index - k), merkle_root(leaves[:k])]


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: does ``path`` prove ``leaf`` at ``index`` in the tree of ``size`` with ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(sibling, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency_path(leaves: Sequence[bytes], size: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 section 2.1.4.1: the tree of the first ``size`` leaves is a prefix of this one."""
    if not 0 < size <= len(leaves):
        raise ValueError("the older tree must hold between one leaf and all of them")
    return _subproof(size, leaves, True)


def _subproof(size: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    if size == len(leaves):
        return [] if complete else [merkle_root(leaves)]
    k = _split(len(leaves))
    if size <= k:
        return [*_subproof(size, leaves[:k], complete), merkle_root(leaves[k:])]
    return [*_subproof(size - k, leaves[k:], False), merkle_root(leaves[:k])]


def verify_consistency(
    first_size: int, second_size: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: does ``path`` prove the tree of ``first_size`` a prefix of that of ``second_size``?"""
    if not 0 < first_size <= second_size:
        return False
    if first_size == second_size:
        return not path and first_root == second_root
    if not path:
        return False
    proof = list(path)
    if first_size & (first_size - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        proof.insert(0, first_root)
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
