"""RFC 9162 §2.1 Merkle trees, pure: hashing, tree heads, inclusion, consistency and multi-entry proofs.

    leaf hash  = SHA-256(0x00 || entry)            node hash = SHA-256(0x01 || left || right)
    MTH({})    = SHA-256("")                       MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n])), k the largest
                                                               power of two smaller than n

Proofs are *generated* from complete subtrees read through a `NodeSource`:
``nodes(level, index)`` is the hash of leaves ``[index·2^level, (index+1)·2^level)``,
asked only for subtrees that are complete in the tree at hand. `MerkleTree`
is an in-memory source (tests, verifiers, the lender's device heads); the
lender's log reads its SQLite file (lender.evidence.log). Proofs are
*verified* with nothing but the proof: RFC 9162 §2.1.3.2 and §2.1.4.2, step
for step. A multi-entry proof (`multi_proof`) is this project's: the hashes
a left-to-right walk of the tree needs besides the given leaves
(docs/evidence.md). Checked against the Certificate Transparency test data in
tests/telemetry/test_merkle.py.
"""
from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable, Sequence

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

NodeSource = Callable[[int, int], bytes]


def leaf_hash(entry: bytes) -> bytes:
    """The hash of one log entry as a leaf (RFC 9162 §2.1.1: a 0x00 prefix)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node (RFC 9162 §2.1.1: a 0x01 prefix)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(size: int) -> int:
    """k of RFC 9162: the largest power of two smaller than `size` (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def subtree_hash(nodes: NodeSource, start: int, end: int) -> bytes:
    """MTH of leaves [start, end), a range the RFC 9162 recursion produces (start aligned to the range's split)."""
    size = end - start
    if size & (size - 1) == 0:  # a complete subtree, aligned: read it
        level = size.bit_length() - 1
        return nodes(level, start >> level)
    k = split(size)
    return node_hash(subtree_hash(nodes, start, start + k), subtree_hash(nodes, start + k, end))


def tree_head(nodes: NodeSource, size: int) -> bytes:
    """MTH of the first `size` leaves."""
    return EMPTY_ROOT if size == 0 else subtree_hash(nodes, 0, size)


def inclusion_path(nodes: NodeSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, from the leaf up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    path = []
    start, end = 0, size
    while end - start > 1:
        k = split(end - start)
        if index < start + k:
            path.append(subtree_hash(nodes, start + k, end))
            end = start + k
        else:
            path.append(subtree_hash(nodes, start, start + k))
            start += k
    path.reverse()
    return path


def consistency_path(nodes: NodeSource, old: int, new: int) -> list[bytes]:
    """PROOF(old, D[new]) of RFC 9162 §2.1.4.1; empty when `old` is 0 or equals `new`."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from a tree of {old} to one of {new}")
    if old in (0, new):
        return []
    path = []
    start, end, remaining, whole = 0, new, old, True
    while end - start != remaining:
        k = split(end - start)
        if remaining <= k:
            path.append(subtree_hash(nodes, start + k, end))
            end = start + k
        else:
            path.append(subtree_hash(nodes, start, start + k))
            start += k
            remaining -= k
            whole = False
    if not whole:
        path.append(subtree_hash(nodes, start, end))
    path.reverse()
    return path


def root_from_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that `path` proves `leaf` at `index` of a tree of `size` under (RFC 9162 §2.1.3.2), or None."""
    if not 0 <= index < size or len(leaf) != HASH_BYTES:
        return None
    fn, sn, result = index, size - 1, leaf
    for sibling in path:
        if sn == 0 or len(sibling) != HASH_BYTES:
            return None
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    return result if sn == 0 else None


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """Whether `path` proves `leaf` at `index` in the tree of `size` leaves whose head is `root`."""
    return root_from_inclusion(leaf, index, size, path) == root


def root_from_consistency(old: int, new: int, old_root: bytes, path: Sequence[bytes]) -> bytes | None:
    """The head of the tree of `new` leaves that `path` proves extends `old_root`'s tree of `old`, or None.

    RFC 9162 §2.1.4.2, which computes both heads from the path: None unless
    the first comes out as `old_root`. From an empty tree nothing can be
    computed (any tree extends it), so `old` must be at least 1.
    """
    if not 1 <= old <= new or any(len(h) != HASH_BYTES for h in (old_root, *path)):
        return None
    if old == new:
        return old_root if not path else None
    if not path:
        return None
    hashes = [old_root, *path] if old & (old - 1) == 0 else list(path)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    first = second = hashes[0]
    for step in hashes[1:]:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            first = node_hash(step, first)
            second = node_hash(step, second)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            second = node_hash(second, step)
        fn >>= 1
        sn >>= 1
    return second if sn == 0 and first == old_root else None


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]) -> bool:
    """Whether `path` proves the tree of `new` leaves (head `new_root`) extends the one of `old` (RFC 9162 §2.1.4.2)."""
    if old == 0 and new >= 0:
        return not path and old_root == EMPTY_ROOT and len(new_root) == HASH_BYTES
    return root_from_consistency(old, new, old_root, path) == new_root


# --- several entries at once -----------------------------------------------------------------

def multi_proof(nodes: NodeSource, indices: Sequence[int], size: int) -> list[bytes]:
    """The hashes that, with the leaves at the sorted, distinct `indices`, give the head of the tree of `size`.

    Walk the RFC 9162 tree left to right; a subtree holding none of the
    leaves contributes its hash, in walk order. `root_from_multi_proof`
    walks the same way. Adjacent leaves share their upper path, so a
    device's entries cost far fewer hashes than one path each.
    """
    _check_indices(indices, size)
    out: list[bytes] = []

    def walk(start: int, end: int, low: int, high: int) -> None:
        if low == high:
            out.append(subtree_hash(nodes, start, end))
        elif end - start > 1:
            middle = start + split(end - start)
            cut = bisect.bisect_left(indices, middle, low, high)
            walk(start, middle, low, cut)
            walk(middle, end, cut, high)

    if size:
        walk(0, size, 0, len(indices))
    return out


def root_from_multi_proof(indices: Sequence[int], leaves: Sequence[bytes], size: int,
                          proof: Sequence[bytes]) -> bytes | None:
    """The head the leaves at sorted, distinct `indices` and `proof` give for a tree of `size`, or None."""
    try:
        _check_indices(indices, size)
    except ValueError:
        return None
    if len(leaves) != len(indices) or any(len(h) != HASH_BYTES for h in (*leaves, *proof)):
        return None
    if size == 0:
        return EMPTY_ROOT if not proof else None
    hashes = iter(proof)
    missing = object()

    def walk(start: int, end: int, low: int, high: int) -> bytes:
        if low == high:
            return next(hashes, missing)
        if end - start == 1:
            return leaves[low]
        middle = start + split(end - start)
        cut = bisect.bisect_left(indices, middle, low, high)
        left = walk(start, middle, low, cut)
        right = walk(middle, end, cut, high)
        if left is missing or right is missing:
            return missing
        return node_hash(left, right)

    root = walk(0, size, 0, len(indices))
    if root is missing or next(hashes, None) is not None:
        return None
    return root


def _check_indices(indices: Sequence[int], size: int) -> None:
    if any(b <= a for a, b in zip(indices, indices[1:])):
        raise ValueError("leaf indices must be sorted and distinct")
    if indices and not (0 <= indices[0] and indices[-1] < size):
        raise ValueError(f"leaf indices {indices[0]}..{indices[-1]} are not all in a tree of {size}")


# --- an in-memory tree -------------------------------------------------------------------------

class MerkleTree:
    """Leaf hashes and every complete interior node, in memory; append-only, or with leaves replaced (`set`).

    ``levels[l][i]`` is the complete subtree over leaves ``[i·2^l, (i+1)·2^l)``.
    Memory is ~2 hashes per leaf: right for tests, verifiers and the lender's
    device heads, not for the lender's log itself (which lives in SQLite).
    """

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    def __len__(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> int:
        """Add a leaf hash; return its index."""
        levels = self._levels
        index = len(levels[0])
        levels[0].append(leaf)
        level, position = 0, index
        while position & 1:
            if len(levels) == level + 1:
                levels.append([])
            row = levels[level]
            levels[level + 1].append(node_hash(row[position - 1], row[position]))
            level += 1
            position >>= 1
        return index

    def set(self, index: int, leaf: bytes) -> None:
        """Replace the leaf hash at `index` (a state tree such as the lender's device heads)."""
        levels = self._levels
        levels[0][index] = leaf
        level, position = 0, index
        while level + 1 < len(levels) and (position >> 1) < len(levels[level + 1]):
            position >>= 1
            row = levels[level]
            levels[level + 1][position] = node_hash(row[2 * position], row[2 * position + 1])
            level += 1

    def node(self, level: int, index: int) -> bytes:
        """A complete subtree's hash (a `NodeSource`)."""
        return self._levels[level][index]

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def root(self, size: int | None = None) -> bytes:
        return tree_head(self.node, len(self) if size is None else self._within(size))

    def inclusion_path(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_path(self.node, index, len(self) if size is None else self._within(size))

    def consistency_path(self, old: int, new: int | None = None) -> list[bytes]:
        return consistency_path(self.node, old, len(self) if new is None else self._within(new))

    def multi_proof(self, indices: Sequence[int], size: int | None = None) -> list[bytes]:
        return multi_proof(self.node, indices, len(self) if size is None else self._within(size))

    def _within(self, size: int) -> int:
        if not 0 <= size <= len(self):
            raise ValueError(f"the tree has {len(self)} leaves, not {size}")
        return size
