"""RFC 6962 hashing against the RFC's published test vectors."""

from __future__ import annotations

import random

import pytest

from audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_path,
    inclusion_path,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
HASHED = [leaf_hash(leaf) for leaf in LEAVES]


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert merkle_root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert CompactRange().root() == EMPTY_ROOT


def test_leaf_and_node_hashes() -> None:
    assert leaf_hash(b"").hex() == ROOTS[0]  # the one-leaf tree's root is its leaf hash
    assert node_hash(HASHED[0], HASHED[1]).hex() == ROOTS[1]


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_of_the_rfc_test_data(size: int) -> None:
    assert merkle_root(HASHED[:size]).hex() == ROOTS[size - 1]


def test_published_inclusion_path() -> None:
    assert [h.hex() for h in inclusion_path(HASHED, 5)] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]


def test_every_inclusion_proof_verifies_and_wrong_ones_do_not() -> None:
    for size in range(1, 9):
        root = merkle_root(HASHED[:size])
        for index in range(size):
            path = inclusion_path(HASHED[:size], index)
            assert verify_inclusion(HASHED[index], index, size, path, root)
            assert not verify_inclusion(HASHED[(index + 1) % 8], index, size, path, root)  # a wrong leaf
            if size > 1:
                assert not verify_inclusion(HASHED[index], (index + 1) % size, size, path, root)
                assert not verify_inclusion(HASHED[index], index, size, path[:-1], root)


def test_compact_range_equals_the_recursive_definition_at_every_size() -> None:
    rng = random.Random(6962)
    leaves = [leaf_hash(rng.randbytes(8)) for _ in range(300)]
    tree = CompactRange()
    for size, leaf in enumerate(leaves, start=1):
        tree.append(leaf)
        if size in (1, 2, 3, 7, 64, 100, 255, 256, 257, 300):
            assert tree.root() == merkle_root(leaves[:size]) == _mth(leaves[:size])
    resumed = CompactRange(tree.size, tree.subtrees)
    assert resumed.root() == tree.root()


def _mth(leaves: list[bytes]) -> bytes:
    """MTH exactly as RFC 6962 section 2.1 writes it (recursive), as an independent reference."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


PUBLISHED_CONSISTENCY = {  # the RFC 6962 test data used by certificate-transparency implementations
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}


@pytest.mark.parametrize(("sizes", "path"), PUBLISHED_CONSISTENCY.items())
def test_published_consistency_proofs(sizes: tuple[int, int], path: list[str]) -> None:
    first, second = sizes
    assert [h.hex() for h in consistency_path(HASHED[:second], first)] == path
    assert verify_consistency(first, second, merkle_root(HASHED[:first]), merkle_root(HASHED[:second]), map_hex(path))


def map_hex(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(value) for value in values]


def test_every_consistency_proof_verifies_and_a_rewritten_prefix_does_not() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(33)]
    for second in range(1, len(leaves) + 1):
        for first in range(1, second + 1):
            old_root, new_root = merkle_root(leaves[:first]), merkle_root(leaves[:second])
            path = consistency_path(leaves[:second], first)
            assert verify_consistency(first, second, old_root, new_root, path)
            rewritten = list(leaves[:second])
            rewritten[first - 1] = leaf_hash(b"rewritten")
            forged = consistency_path(rewritten, first)
            assert not verify_consistency(first, second, old_root, merkle_root(rewritten), forged)
