"""RFC 9162 Merkle trees: the Certificate Transparency reference data, then every size and index up to a few thousand."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    root_from_consistency,
    root_from_inclusion,
    root_from_multi_proof,
    verify_consistency,
    verify_inclusion,
)

# The reference leaves and tree heads of the Certificate Transparency test data (RFC 6962 / RFC 9162 hashing,
# as published with transparency-dev/merkle), and the proofs published with them.
CT_ENTRIES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
CT_INCLUSION = {
    (0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}
CT_CONSISTENCY = {
    (2, 8): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
}

BIG = 3000
TREE = MerkleTree(leaf_hash(i.to_bytes(4, "big")) for i in range(BIG))   # every prefix of it is a tree too


@pytest.fixture(scope="module")
def reference() -> MerkleTree:
    return MerkleTree(leaf_hash(entry) for entry in CT_ENTRIES)


def test_every_tree_head_is_the_certificate_transparency_reference_root(reference):
    assert [reference.root(size) for size in range(9)] == CT_ROOTS
    assert EMPTY_ROOT == CT_ROOTS[0] and leaf_hash(b"") == CT_ROOTS[1]


@pytest.mark.parametrize(("index", "size"), sorted(CT_INCLUSION))
def test_inclusion_paths_are_the_reference_ones_and_verify(reference, index, size):
    path = reference.inclusion_path(index, size)
    assert [h.hex() for h in path] == CT_INCLUSION[index, size]
    assert verify_inclusion(leaf_hash(CT_ENTRIES[index]), index, size, path, CT_ROOTS[size])


@pytest.mark.parametrize(("old", "new"), sorted(CT_CONSISTENCY))
def test_consistency_paths_are_the_reference_ones_and_verify(reference, old, new):
    path = reference.consistency_path(old, new)
    assert [h.hex() for h in path] == CT_CONSISTENCY[old, new]
    assert verify_consistency(old, new, CT_ROOTS[old], CT_ROOTS[new], path)
    assert root_from_consistency(old, new, CT_ROOTS[old], path) == CT_ROOTS[new]


def test_every_index_of_every_small_tree_proves_and_every_older_tree_is_consistent():
    for size in range(1, 70):
        root = TREE.root(size)
        for index in range(size):
            assert verify_inclusion(TREE.leaf(index), index, size, TREE.inclusion_path(index, size), root)
        for old in range(size + 1):
            assert verify_consistency(old, size, TREE.root(old), root, TREE.consistency_path(old, size)), (old, size)


EDGES = sorted({n + d for k in range(1, 12) for n in (1 << k,) for d in (-1, 0, 1)} | {1, 2, 3, BIG})


@pytest.mark.parametrize("size", EDGES)
def test_the_first_and_last_leaf_of_sizes_around_powers_of_two_prove(size):
    root = TREE.root(size)
    for index in {0, size // 2, size - 2, size - 1} - {-1}:
        path = TREE.inclusion_path(index, size)
        assert verify_inclusion(TREE.leaf(index), index, size, path, root)
        assert len(path) <= (size - 1).bit_length()


def _tampered(path: list[bytes], where: int) -> list[bytes]:
    changed = list(path)
    changed[where] = bytes([changed[where][0] ^ 1]) + changed[where][1:]
    return changed


@settings(max_examples=400)
@given(st.data())
def test_an_inclusion_proof_holds_for_its_leaf_only(data):
    size = data.draw(st.integers(1, BIG), label="size")
    index = data.draw(st.one_of(st.just(0), st.just(size - 1), st.integers(0, size - 1)), label="index")
    root, leaf, path = TREE.root(size), TREE.leaf(index), TREE.inclusion_path(index, size)
    assert verify_inclusion(leaf, index, size, path, root)
    assert root_from_inclusion(leaf, index, size, path) == root
    other = data.draw(st.integers(0, BIG - 1), label="other leaf")
    if TREE.leaf(other) != leaf:
        assert not verify_inclusion(TREE.leaf(other), index, size, path, root)
    if size > 1:
        assert not verify_inclusion(leaf, (index + 1) % size, size, path, root)
        assert not verify_inclusion(leaf, index, size, _tampered(path, data.draw(st.integers(0, len(path) - 1))), root)
        assert not verify_inclusion(leaf, index, size, path[:-1], root)
    assert not verify_inclusion(leaf, index, size, path + [leaf], root)
    assert not verify_inclusion(leaf, size, size, path, root)
    if size < BIG:
        assert not verify_inclusion(leaf, index, size + 1, path, TREE.root(size + 1))


@settings(max_examples=400)
@given(st.data())
def test_a_consistency_proof_holds_for_its_two_trees_only(data):
    new = data.draw(st.integers(1, BIG), label="new")
    old = data.draw(st.one_of(st.just(1), st.just(new), st.integers(1, new)), label="old")
    path = TREE.consistency_path(old, new)
    assert verify_consistency(old, new, TREE.root(old), TREE.root(new), path)
    if old < new:
        assert path, "RFC 9162: a proof between two different trees is never empty"
        assert not verify_consistency(old, new, TREE.root(old), TREE.root(new - 1), path)
        wrong_old = TREE.root(old - 1) if old > 1 else TREE.root(2)
        assert not verify_consistency(old, new, wrong_old, TREE.root(new), path)
        assert not verify_consistency(old, new, TREE.root(old), TREE.root(new),
                                      _tampered(path, data.draw(st.integers(0, len(path) - 1))))
        assert not verify_consistency(old, new, TREE.root(old), TREE.root(new), path[:-1])
        assert not verify_consistency(new, old, TREE.root(new), TREE.root(old), path)


def test_nothing_is_consistent_with_an_empty_path_between_different_trees_and_everything_with_the_empty_tree():
    assert verify_consistency(0, 5, EMPTY_ROOT, TREE.root(5), [])
    assert not verify_consistency(0, 5, TREE.root(1), TREE.root(5), [])
    assert not verify_consistency(3, 5, TREE.root(3), TREE.root(5), [])
    assert verify_consistency(5, 5, TREE.root(5), TREE.root(5), [])
    assert not verify_consistency(5, 5, TREE.root(5), TREE.root(6), [])


def test_malformed_hashes_are_refused_not_crashed_on():
    path = TREE.inclusion_path(3, 10)
    assert not verify_inclusion(TREE.leaf(3)[:31], 3, 10, path, TREE.root(10))
    assert not verify_inclusion(TREE.leaf(3), 3, 10, [path[0][:31], *path[1:]], TREE.root(10))
    assert not verify_consistency(6, 10, TREE.root(6)[:31], TREE.root(10), TREE.consistency_path(6, 10))
    assert not verify_inclusion(TREE.leaf(3), -1, 10, path, TREE.root(10))


@settings(max_examples=200)
@given(st.data())
def test_a_multi_entry_proof_gives_the_root_for_its_leaves_and_no_others(data):
    size = data.draw(st.integers(0, 600), label="size")
    chosen = sorted(data.draw(st.sets(st.integers(0, size - 1), max_size=size), label="leaves")) if size else []
    proof = TREE.multi_proof(chosen, size)
    leaves = [TREE.leaf(i) for i in chosen]
    assert root_from_multi_proof(chosen, leaves, size, proof) == TREE.root(size)
    assert len(proof) <= sum(len(TREE.inclusion_path(i, size)) for i in chosen) or not chosen
    if chosen:
        where = data.draw(st.integers(0, len(chosen) - 1))
        assert root_from_multi_proof(chosen, [*leaves[:where], TREE.leaf(BIG - 1 - where), *leaves[where + 1:]], size,
                                     proof) != TREE.root(size) or TREE.leaf(BIG - 1 - where) == leaves[where]
        assert root_from_multi_proof(chosen[:where] + chosen[where + 1:], leaves[:where] + leaves[where + 1:], size,
                                     proof) != TREE.root(size)
    if proof:
        assert root_from_multi_proof(chosen, leaves, size, proof[:-1]) is None
        assert root_from_multi_proof(chosen, leaves, size, proof + proof[:1]) is None


def test_a_dense_run_of_leaves_costs_a_few_hashes_not_a_path_each():
    run = list(range(1000, 2000))
    assert len(TREE.multi_proof(run)) < 25
    assert root_from_multi_proof(run, [TREE.leaf(i) for i in run], BIG, TREE.multi_proof(run)) == TREE.root()


def test_replacing_leaves_gives_the_tree_built_from_the_new_leaves():
    generator = random.Random(13)
    leaves = [TREE.leaf(i) for i in range(777)]
    tree = MerkleTree(leaves)
    for _ in range(200):
        index = generator.randrange(len(leaves))
        leaves[index] = leaf_hash(generator.randbytes(8))
        tree.set(index, leaves[index])
    assert tree.root() == MerkleTree(leaves).root()
    assert verify_inclusion(leaves[500], 500, 777, tree.inclusion_path(500), tree.root())
