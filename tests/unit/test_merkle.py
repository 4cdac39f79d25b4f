"""RFC 9162 Merkle trees: published test vectors, then cross-checks against a naive implementation."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy_helper.ledger import merkle

# Test vectors copied from transparency-dev/merkle, proof/verify_test.go (Apache-2.0; the
# RFC 6962 / RFC 9162 vectors shared with certificate-transparency-go): the leaf inputs,
# the tree heads of the trees of their first 1..8 leaves, and inclusion and consistency proofs.
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                     "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
# (leaf, 1-based as in the source; tree size; proof)
INCLUSION = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
LEAF_HASHES = [merkle.leaf_hash(leaf) for leaf in LEAVES]


def test_tree_heads_match_the_published_roots() -> None:
    assert merkle.tree_hash([]) == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    compact = merkle.CompactRange()
    for size in range(1, 9):
        assert merkle.tree_hash(LEAF_HASHES[:size]) == ROOTS[size - 1]
        compact.append(LEAF_HASHES[size - 1])
        assert compact.root() == ROOTS[size - 1] and compact.is_valid()


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_published_vectors(leaf: int, size: int, proof: list[str]) -> None:
    expected = [bytes.fromhex(p) for p in proof]
    assert merkle.inclusion_proof(LEAF_HASHES[:size], leaf - 1) == expected
    assert merkle.verify_inclusion(leaf - 1, size, LEAF_HASHES[leaf - 1], expected, ROOTS[size - 1])
    # The corruptions the source's verifier test rejects.
    root, leaf_h, index = ROOTS[size - 1], LEAF_HASHES[leaf - 1], leaf - 1
    wrong = [
        (index - 1, size, leaf_h, expected, root),
        (index + 1, size, leaf_h, expected, root),
        (index ^ 2, size, leaf_h, expected, root),
        (index, size * 2, leaf_h, expected, root),
        (index, size // 2, leaf_h, expected, root),
        (index, size, merkle.leaf_hash(b"WrongLeaf"), expected, root),
        (index, size, leaf_h, expected, merkle.EMPTY_ROOT),
        (index, size, leaf_h, expected, SOME_HASH),
        (index, size, leaf_h, [*expected, b""], root),
        (index, size, leaf_h, [*expected, root], root),
        (index, size, leaf_h, [b"", *expected], root),
        (index, size, leaf_h, [root, *expected], root),
    ]
    for i in range(len(expected)):
        flipped = list(expected)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        wrong.append((index, size, leaf_h, flipped, root))
    if expected:
        wrong.append((index, size, leaf_h, expected[:-1], root))
    for args in wrong:
        assert not merkle.verify_inclusion(*args), args


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_published_vectors(size1: int, size2: int, proof: list[str]) -> None:
    expected = [bytes.fromhex(p) for p in proof]
    assert merkle.consistency_proof(LEAF_HASHES[:size2], size1) == expected
    root1, root2 = ROOTS[size1 - 1], ROOTS[size2 - 1]
    assert merkle.verify_consistency(size1, size2, root1, root2, expected)
    if not expected:
        return
    wrong = [
        (size1 - 1, size2, root1, root2, expected),
        (size1 + 1, size2, root1, root2, expected),
        (size1 ^ 2, size2, root1, root2, expected),
        (size1, size2 * 2, root1, root2, expected),
        (size1, size2 // 2, root1, root2, expected),
        (size1, size2, merkle.leaf_hash(b"WrongRoot"), root2, expected),
        (size1, size2, root1, merkle.leaf_hash(b"WrongRoot"), expected),
        (size1, size2, root2, root1, expected),
        (size1, size2, root1, root2, []),
        (size1, size2, root1, root2, [*expected, b""]),
        (size1, size2, root1, root2, [*expected, root1]),
        (size1, size2, root1, root2, [*expected, root2]),
        (size1, size2, root1, root2, [b"", *expected]),
        (size1, size2, root1, root2, [root1, *expected]),
        (size1, size2, root1, root2, [root2, *expected]),
        (size1, size2, root1, root2, [expected[0], *expected]),
        (size1, size2, root1, root2, expected[:-1]),
    ]
    for i in range(len(expected)):
        flipped = list(expected)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        wrong.append((size1, size2, root1, root2, flipped))
    for args in wrong:
        assert not merkle.verify_consistency(*args), args


def test_consistency_edge_cases_from_the_published_suite() -> None:
    r1, r2 = b"don't care 1", b"don't care 2"
    empty = merkle.EMPTY_ROOT
    assert not merkle.verify_consistency(0, 0, r1, r2, [])
    assert not merkle.verify_consistency(1, 1, r1, r2, [])
    assert merkle.verify_consistency(0, 0, r1, r1, [])
    assert merkle.verify_consistency(0, 1, r1, r2, [])
    assert merkle.verify_consistency(1, 1, r2, r2, [])
    assert not merkle.verify_consistency(1, 0, r1, r2, [])
    assert not merkle.verify_consistency(2, 1, r1, r2, [])
    assert not merkle.verify_consistency(1, 2, r1, r2, [])
    assert not merkle.verify_consistency(0, 0, empty, empty, [empty])
    assert not merkle.verify_consistency(0, 1, empty, empty, [empty])
    assert not merkle.verify_consistency(1, 1, empty, empty, [empty])


# -- cross-checks against a naive implementation ----------------------------------


def naive_root(leaves: list[bytes]) -> bytes:
    """Level by level, promoting a lone last node unchanged (RFC 9162's shape, built bottom-up)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = [hashlib.sha256(b"\x00" + leaf).digest() for leaf in leaves]
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


bodies = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None)
@given(bodies, st.data())
def test_every_proof_verifies_and_roots_agree_with_a_naive_tree(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    compact = merkle.CompactRange()
    compact.extend(hashes)
    root = naive_root(leaves)
    assert merkle.tree_hash(hashes) == compact.root() == root
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = merkle.inclusion_proof(hashes, index)
    assert merkle.verify_inclusion(index, len(leaves), hashes[index], proof, root)
    assert not merkle.verify_inclusion(index, len(leaves), merkle.leaf_hash(leaves[index] + b"x"), proof, root)
    old = data.draw(st.integers(0, len(leaves)))
    old_root = naive_root(leaves[:old])
    consistency = merkle.consistency_proof(hashes, old)
    assert merkle.verify_consistency(old, len(leaves), old_root, root, consistency)
    if 0 < old < len(leaves):
        changed = [*leaves[: old - 1], leaves[old - 1] + b"!", *leaves[old:]]
        assert not merkle.verify_consistency(old, len(leaves), old_root, naive_root(changed), consistency)
