"""The lender's transparency log, in the store's SQLite file: appends inside the store's transactions, checkpoints, proofs.

Every stored envelope and every registry event (registration, enrollment,
revocation, release, review, a staff member's ack of an alarm) is one entry
(telemetry.logentry) of an RFC 9162 Merkle tree (telemetry.merkle).
`SQLiteStore` owns one `EvidenceLog` per connection and calls it inside its own transactions, so the log and the store
never disagree after a crash: `begin` when a write transaction starts,
`append_*` with each insert, `seal` just before the commit (it signs a
checkpoint for the new head with the lender's key and keeps it), `abandon`
on a rollback. Tables (docs/lender-storage.md):

    log_entries     idx, kind, device, seq, leaf, entry   one row per entry; an envelope's entry is rebuilt
                                                          from its `envelopes` row (which names its log index),
                                                          an event's bytes are kept here
    log_nodes       level, idx, hash                      complete subtrees at levels 4, 8, 12, ...
    log_heads       device, slot, count, last_index, max_seq   what each checkpoint commits to per device
    log_checkpoints tree_size, time_ms, root, signed      every signed checkpoint

Why sparse nodes: an append writes its leaf row and, one time in sixteen, a
node row; any subtree is then one range read of at most eight rows. The
newest `WINDOW` leaves and the right edge are also held in memory, so the
receipt in each ack needs no read at all. `audit` recomputes everything from
the evidence itself: an envelope or event edited, deleted or reordered in the
file afterwards no longer hashes to what the signed checkpoints committed to.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from durable.exc import KeyFileExistsError
from durable.keyfile import create_key, read_key
from lender.exc import StoreFormatError
from telemetry.exc import ReceiptError
from telemetry.identity import Identity
from telemetry.logentry import (
    AlarmAckNote,
    DeviceHead,
    Enrollment,
    EnrollmentEvidence,
    EntryKind,
    LogEntry,
    Registration,
    ReviewNote,
    at_ms,
    envelope_entry,
)
from telemetry.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    consistency_path,
    inclusion_path,
    leaf_hash,
    multi_proof,
    node_hash,
    tree_head,
)
from telemetry.receipt import Checkpoint, CheckpointReference, DeliveryReceipt, SignedCheckpoint

STRIDE = 4            # interior nodes are kept at every STRIDE-th level
WINDOW = 4096         # the newest leaves whose proofs are served from memory
LENDER_KEY = Path("enroll") / "lender.key"   # the lender's signing key, under its data directory

LOG_TABLES = (
    "CREATE TABLE log_entries (idx INTEGER PRIMARY KEY, kind INTEGER NOT NULL, device TEXT NOT NULL,"
    " seq INTEGER, leaf BLOB NOT NULL, entry BLOB) STRICT",
    "CREATE INDEX log_events_by_device ON log_entries (device, idx) WHERE kind != 1",
    "CREATE TABLE log_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,"
    " PRIMARY KEY (level, idx)) STRICT, WITHOUT ROWID",
    "CREATE TABLE log_heads (device TEXT PRIMARY KEY, slot INTEGER NOT NULL UNIQUE, count INTEGER NOT NULL,"
    " last_index INTEGER NOT NULL, max_seq INTEGER) STRICT",
    "CREATE TABLE log_checkpoints (tree_size INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, root BLOB NOT NULL,"
    " signed BLOB NOT NULL) STRICT",
)


def lender_identity(data_dir: str | os.PathLike, *, create: bool = True) -> Identity:
    """The lender's signing key (``DATA/enroll/lender.key``, 0600), made on first use.

    One key: it signs enrollment responses and site files (technicians pin
    it), the log's checkpoints, and it is inside every enrollment binding, so
    a third party pins this one key (`pledgewatch lender key`). docs/decisions.md.
    """
    path = Path(data_dir) / LENDER_KEY
    if not path.exists() and create:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(KeyFileExistsError):
            create_key(path)  # a concurrent creator may win the link: then load theirs
    return Identity(read_key(path))


def push(frontier: dict[int, bytes], index: int, leaf: bytes) -> list[tuple[int, int, bytes]]:
    """Append the leaf at `index` to the right edge `frontier` (level -> complete subtree); return the nodes made.

    The leaf and each complete subtree it closes, as (level, position, hash):
    the right edge changes where the index's trailing one bits are.
    """
    made = [(0, index, leaf)]
    node, level, position = leaf, 0, index
    while position & 1:
        node = node_hash(frontier.pop(level), node)
        level += 1
        position >>= 1
        made.append((level, position, node))
    frontier[level] = node
    return made


def edge_root(frontier: dict[int, bytes]) -> bytes:
    """The head of a tree from its right edge: the complete subtrees folded from the smallest up."""
    result = None
    for level in sorted(frontier):
        result = frontier[level] if result is None else node_hash(frontier[level], result)
    return EMPTY_ROOT if result is None else result


@dataclass(frozen=True, slots=True)
class LoggedEntry:
    """One row of the log with its evidence: the entry's bytes as the store holds them now (None when lost)."""

    index: int
    kind: EntryKind
    device: str
    seq: int | None
    leaf: bytes
    entry: bytes | None


@dataclass(frozen=True, slots=True)
class HeadProof:
    """A device's head in a checkpoint: the head, its slot in the heads tree, and the inclusion path."""

    head: DeviceHead
    slot: int
    path: list[bytes]


@dataclass(slots=True)
class AuditReport:
    """What recomputing the log from the evidence found: the problems (empty when it holds), and what was checked."""

    entries: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class EvidenceLog:
    """The log over one SQLite connection (see the module docstring); the store drives it, one thread at a time."""

    def __init__(self, conn: sqlite3.Connection, signer: Callable[[], Identity],
                 clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._signer = signer
        self._identity: Identity | None = None
        self._clock = clock
        self._loaded = False
        self.size = 0
        self._frontier: dict[int, bytes] = {}      # level -> the complete subtree at the right edge
        self._recent: dict[tuple[int, int], bytes] = {}
        self._heads: dict[str, DeviceHead] = {}
        self._slots: dict[str, int] = {}
        self._heads_tree = MerkleTree()
        self._touched: dict[str, list] = {}       # device -> [entries appended, last index, highest seq] since the seal
        self._appended = False
        self._rows: list[tuple] = []               # log_entries rows not written yet (one executemany per seal)
        self.latest: SignedCheckpoint | None = None

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = self._signer()
        return self._identity

    # --- the store's transaction hooks ---

    def begin(self, stored_size: int | None = None) -> None:
        """A write transaction started: catch up with entries another connection appended since.

        `stored_size`: the number of entries the file holds, when the store read it already (in the round trip
        that took its write lock); else it is read here.
        """
        if not self._loaded:
            self.load()
            return
        stored = self._stored_size() if stored_size is None else stored_size
        if stored != self.size:
            self._catch_up(stored)

    def _catch_up(self, stored: int) -> None:
        """Take up what other writers appended since this log's last commit, rather than reading it all again.

        With several writers (lender.evidence.postgres: workers take turns) a
        writer finds the log grown at nearly every turn; reading the right
        edge, every device head and the heads tree afresh each time would cost
        it more than its own appends. The new leaves extend the right edge,
        the heads they moved (``last_index`` at or past the old size) replace
        theirs, new devices take the next slots. Anything unexpected (fewer
        rows than the size says, a head in another slot) reads the log whole.
        """
        old = self.size
        rows = self._conn.execute("SELECT idx, leaf FROM log_entries WHERE idx >= ? ORDER BY idx", (old,)).fetchall()
        if stored < old or len(rows) != stored - old or any(index != old + n for n, (index, _) in enumerate(rows)):
            self.load()
            return
        for index, leaf in rows:
            for level, position, node in push(self._frontier, index, leaf):
                self._recent[(level, position)] = node
        self.size = stored
        for device, slot, count, last_index, max_seq in self._conn.execute(
                "SELECT device, slot, count, last_index, max_seq FROM log_heads WHERE last_index >= ? ORDER BY slot",
                (old,)).fetchall():
            head = DeviceHead(device, count, last_index, max_seq)
            known = self._slots.get(device)
            if known is None and slot == len(self._heads_tree):
                self._slots[device] = self._heads_tree.append(head.leaf)
            elif known == slot:
                self._heads_tree.set(slot, head.leaf)
            else:
                self.load()
                return
            self._heads[device] = head
        self.latest = self._latest_checkpoint()
        self._prune()

    def abandon(self) -> None:
        """The transaction rolled back: what is in memory may be ahead of the file; read it again next time."""
        self._loaded = False
        self._touched.clear()
        self._appended = False
        self._rows.clear()

    def seal(self) -> SignedCheckpoint | None:
        """Before the commit: if entries were appended, keep the device heads and sign a checkpoint for the new head."""
        if not self._appended:
            return None
        self._flush()
        for device, (count, last, seq) in sorted(self._touched.items()):
            head = self._heads.get(device) or DeviceHead(device, 0, last, None)
            head = self._heads[device] = DeviceHead(device, head.count + count, last, head.after(last, seq).max_seq)
            slot = self._slots.get(device)
            if slot is None:
                slot = self._slots[device] = self._heads_tree.append(head.leaf)
            else:
                self._heads_tree.set(slot, head.leaf)
            self._conn.execute(
                "INSERT INTO log_heads (device, slot, count, last_index, max_seq) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (device) DO UPDATE SET count = excluded.count, last_index = excluded.last_index,"
                " max_seq = excluded.max_seq", (device, slot, head.count, head.last_index, head.max_seq))
        self._touched.clear()
        self._appended = False
        signed = self._sign()
        self._prune()
        return signed

    def _sign(self) -> SignedCheckpoint:
        now = at_ms(self._clock())
        if self.latest is not None:
            now = max(now, self.latest.checkpoint.time_ms)  # a lender clock set back never dates a head earlier
        checkpoint = Checkpoint(self.size, self.root(), now, self._heads_tree.root(), len(self._heads_tree))
        signed = SignedCheckpoint.sign(checkpoint, self.identity)
        self._conn.execute("INSERT OR IGNORE INTO log_checkpoints (tree_size, time_ms, root, signed)"
                           " VALUES (?, ?, ?, ?)", (checkpoint.tree_size, now, checkpoint.root, signed.encode()))
        self.latest = signed
        return signed

    def checkpoint_now(self) -> SignedCheckpoint:
        """The latest checkpoint, signing one for the current head if there is none for it yet (inside a transaction)."""
        if self.latest is None or self.latest.checkpoint.tree_size != self.size:
            return self._sign()
        return self.latest

    # --- appends ---

    def append_envelope(self, device: str, seq: int, received_at: float, raw: bytes) -> int:
        """Log a stored envelope (its row keeps the bytes and the index); return its index."""
        return self._append(EntryKind.ENVELOPE, device, leaf_hash(envelope_entry(device, at_ms(received_at), raw)),
                            None, seq)

    def append_event(self, entry: LogEntry) -> int:
        """Log a registry event; its bytes are kept in the log. Return its index."""
        return self._append(entry.kind, entry.device, leaf_hash(entry.encode()), entry.encode(), None)

    def registration(self, device: str, at: float, public_key: bytes, asset: str | None, binding: bytes | None,
                     enrollment: EnrollmentEvidence | None) -> int:
        return self.append_event(LogEntry(EntryKind.REGISTRATION, device, at_ms(at),
                                          Registration(public_key, asset or "", binding, enrollment)))

    def enrollment(self, device: str, at: float, binding: bytes, enrollment: EnrollmentEvidence) -> int:
        return self.append_event(LogEntry(EntryKind.ENROLLMENT, device, at_ms(at), Enrollment(binding, enrollment)))

    def revocation(self, device: str, at: float) -> int:
        return self.append_event(LogEntry(EntryKind.REVOCATION, device, at_ms(at), None))

    def review(self, device: str, at: float, seq: int, reviewer: str, note: str) -> int:
        return self.append_event(LogEntry(EntryKind.REVIEW, device, at_ms(at), ReviewNote(seq, reviewer, note)))

    def alarm_ack(self, device: str, at: float, seq: int, by: str, note: str, alarm: str) -> int:
        body = AlarmAckNote(seq, by, note, alarm)
        return self.append_event(LogEntry(EntryKind.ALARM_ACK, device, at_ms(at), body))

    def _append(self, kind: EntryKind, device: str, leaf: bytes, entry: bytes | None, seq: int | None) -> int:
        if not self._loaded:
            self.load()
        index = self.size
        self._rows.append((index, int(kind), device, seq, leaf, entry))
        for level, position, node in push(self._frontier, index, leaf):
            self._recent[(level, position)] = node
            if level and level % STRIDE == 0:
                self._conn.execute("INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)", (level, position, node))
        self.size = index + 1
        pending = self._touched.get(device)
        if pending is None:
            self._touched[device] = [1, index, seq]
        else:
            pending[0] += 1
            pending[1] = index
            if seq is not None and (pending[2] is None or seq > pending[2]):
                pending[2] = seq
        self._appended = True
        return index

    def _flush(self) -> None:
        if self._rows:
            self._conn.executemany("INSERT INTO log_entries (idx, kind, device, seq, leaf, entry)"
                                   " VALUES (?, ?, ?, ?, ?, ?)", self._rows)
            self._rows.clear()

    # --- reading ---

    def root(self) -> bytes:
        """The head of the log as it stands (in this transaction)."""
        return edge_root(self._frontier)

    def node(self, level: int, index: int) -> bytes:
        """A complete subtree's hash (a telemetry.merkle NodeSource): from memory, else one range read."""
        cached = self._recent.get((level, index))
        if cached is not None:
            return cached
        self._flush()
        base = level - level % STRIDE
        count = 1 << (level - base)
        first = index << (level - base)
        if base == 0:
            rows = self._conn.execute("SELECT leaf FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx",
                                      (first, first + count)).fetchall()
        else:
            rows = self._conn.execute("SELECT hash FROM log_nodes WHERE level = ? AND idx >= ? AND idx < ?"
                                      " ORDER BY idx", (base, first, first + count)).fetchall()
        if len(rows) != count:
            raise StoreFormatError(f"the evidence log is damaged: level {base} holds {len(rows)} of the {count} "
                                   f"nodes under node ({level}, {index})")
        row = [r[0] for r in rows]
        while len(row) > 1:
            row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
        return row[0]

    def load(self) -> None:
        """Read the log's state from the file: its size, right edge, device heads and latest checkpoint."""
        self._recent.clear()
        self._touched.clear()
        self._appended = False
        self.size = self._stored_size()
        self._frontier = {}
        start = 0
        for level in range(self.size.bit_length() - 1, -1, -1):
            if self.size >> level & 1:
                self._frontier[level] = self._recent[(level, start >> level)] = self.node(level, start >> level)
                start += 1 << level
        self._heads, self._slots, self._heads_tree = {}, {}, MerkleTree()
        for device, slot, count, last_index, max_seq in self._conn.execute(
                "SELECT device, slot, count, last_index, max_seq FROM log_heads ORDER BY slot"):
            head = self._heads[device] = DeviceHead(device, count, last_index, max_seq)
            self._slots[device] = self._heads_tree.append(head.leaf)
            if slot != self._slots[device]:
                raise StoreFormatError(f"the evidence log's device heads are damaged (slot {slot} of {device})")
        self.latest = self._latest_checkpoint()
        self._loaded = True

    def _latest_checkpoint(self) -> SignedCheckpoint | None:
        row = self._conn.execute("SELECT signed FROM log_checkpoints ORDER BY tree_size DESC LIMIT 1").fetchone()
        try:
            return None if row is None else SignedCheckpoint.decode(row[0], self.identity.public_key)
        except ReceiptError as exc:
            raise StoreFormatError(f"the evidence log's latest checkpoint is not signed by the lender's key "
                                   f"({LENDER_KEY} replaced?): {exc}") from exc

    def _stored_size(self) -> int:
        self._flush()
        return self._conn.execute("SELECT coalesce(max(idx) + 1, 0) FROM log_entries").fetchone()[0]

    def _prune(self) -> None:
        """Forget recent nodes older than the window (and the right edge's neighbours), now and then."""
        if len(self._recent) < 4 * WINDOW:
            return
        low = self.size - WINDOW
        self._recent = {(level, index): node for (level, index), node in self._recent.items()
                        if index >= (low >> level) - 2}

    # --- proofs ---

    def signed_checkpoint(self, tree_size: int) -> SignedCheckpoint | None:
        row = self._conn.execute("SELECT signed FROM log_checkpoints WHERE tree_size = ?", (tree_size,)).fetchone()
        return None if row is None else SignedCheckpoint.decode(row[0], self.identity.public_key)

    def checkpoint_sizes(self) -> list[int]:
        return [row[0] for row in self._conn.execute("SELECT tree_size FROM log_checkpoints ORDER BY tree_size")]

    def first_checkpoint_covering(self, index: int) -> SignedCheckpoint | None:
        """The oldest checkpoint whose tree holds the entry at `index`."""
        row = self._conn.execute("SELECT signed FROM log_checkpoints WHERE tree_size > ? ORDER BY tree_size LIMIT 1",
                                 (index,)).fetchone()
        return None if row is None else SignedCheckpoint.decode(row[0], self.identity.public_key)

    def inclusion_receipt(self, index: int, checkpoint: SignedCheckpoint | None = None) -> bytes:
        """A COSE receipt for the entry at `index` against `checkpoint` (default: the latest)."""
        checkpoint = checkpoint or self.latest
        return checkpoint.inclusion_receipt(index, inclusion_path(self.node, index, checkpoint.checkpoint.tree_size))

    def delivery_receipt(self, index: int, seq: int, received_at: float) -> DeliveryReceipt | None:
        if self.latest is None or index >= self.latest.checkpoint.tree_size:
            return None
        return DeliveryReceipt(seq, at_ms(received_at), self.inclusion_receipt(index))

    def checkpoint_reference(self, index: int) -> CheckpointReference | None:
        if self.latest is None or index >= self.latest.checkpoint.tree_size:
            return None
        return CheckpointReference(index, self.latest.checkpoint.tree_size, self.latest.digest)

    def consistency_path(self, old: int, new: int) -> list[bytes]:
        return consistency_path(self.node, old, new)

    def multi_proof(self, indices: list[int], size: int) -> list[bytes]:
        return multi_proof(self.node, indices, size)

    def head_proof(self, device: str) -> HeadProof | None:
        """The device's head in the latest checkpoint, with its inclusion path in the heads tree."""
        slot = self._slots.get(device)
        if slot is None:
            return None
        return HeadProof(self._heads[device], slot, self._heads_tree.inclusion_path(slot))

    def tree_head(self, size: int) -> bytes:
        return tree_head(self.node, size)

    # --- auditing the log against the evidence ---

    def entries(self) -> Iterator[LoggedEntry]:
        """Every entry by index, an envelope's rebuilt from its row in `envelopes`: what the store holds *now*,
        which the recorded leaf shows to be what was logged, or not."""
        for index, kind, device, seq, leaf, entry, raw, received_at in self._conn.execute(
                "SELECT l.idx, l.kind, l.device, l.seq, l.leaf, l.entry, e.raw, e.received_at FROM log_entries l"
                " LEFT JOIN envelopes e ON l.kind = 1 AND e.device = l.device AND e.seq = l.seq AND e.log_index = l.idx"
                " ORDER BY l.idx"):
            if kind == EntryKind.ENVELOPE:
                entry = None if raw is None else envelope_entry(device, at_ms(received_at), raw)
            yield LoggedEntry(index, EntryKind(kind), device, seq, leaf, entry)

    def device_entries(self, device: str, upto: int, count: int) -> list[tuple[int, bytes, bytes | None]]:
        """(index, recorded leaf, entry bytes or None) of `device`'s `count` entries below `upto`, by index."""
        found = {index: (leaf, envelope_entry(device, at_ms(received_at), raw)) for index, leaf, raw, received_at in
                 self._conn.execute(
                     "SELECT e.log_index, l.leaf, e.raw, e.received_at FROM envelopes e JOIN log_entries l"
                     " ON l.idx = e.log_index AND l.device = e.device AND l.seq = e.seq"
                     " WHERE e.device = ? AND e.log_index < ?", (device, upto))}
        found.update((index, (leaf, entry)) for index, leaf, entry in self._conn.execute(
            "SELECT idx, leaf, entry FROM log_entries WHERE device = ? AND kind != 1 AND idx < ?", (device, upto)))
        if len(found) < count:  # envelope rows gone from the store: their log rows say where they were
            found.update((index, (leaf, None)) for index, leaf in self._conn.execute(
                "SELECT idx, leaf FROM log_entries WHERE device = ? AND kind = 1 AND idx < ?", (device, upto))
                if index not in found)
        return [(index, leaf, entry) for index, (leaf, entry) in sorted(found.items())]

    def audit(self) -> AuditReport:
        """Recompute every leaf from the evidence, every kept node and every checkpoint's root and heads from those."""
        report = AuditReport()
        kept = {(level, index): node for level, index, node in
                self._conn.execute("SELECT level, idx, hash FROM log_nodes")}
        checkpoints = [SignedCheckpoint.decode(signed, self.identity.public_key).checkpoint for (signed,) in
                       self._conn.execute("SELECT signed FROM log_checkpoints ORDER BY tree_size")]
        report.checkpoints = len(checkpoints)
        frontier: dict[int, bytes] = {}
        heads: dict[str, DeviceHead] = {}
        slots: dict[str, int] = {}
        heads_tree = MerkleTree()
        touched: set[str] = set()
        size = 0

        def check(checkpoint: Checkpoint) -> None:
            for name in sorted(touched):
                if name in slots:
                    heads_tree.set(slots[name], heads[name].leaf)
                else:
                    slots[name] = heads_tree.append(heads[name].leaf)
            touched.clear()
            if edge_root(frontier) != checkpoint.root:
                report.problems.append(f"the entries up to {size} do not give the root the checkpoint of that size "
                                       "signed: the log was rewritten")
            elif (heads_tree.root(), len(heads_tree)) != (checkpoint.heads_root, checkpoint.heads_size):
                report.problems.append(f"the device heads at {size} entries are not the ones its checkpoint signed")

        pending = iter(checkpoints)
        upcoming = next(pending, None)
        for logged in self.entries():
            while upcoming is not None and upcoming.tree_size == size:
                check(upcoming)
                upcoming = next(pending, None)
            index, kind, device = logged.index, logged.kind, logged.device
            if index != size:
                report.problems.append(f"entry {size} is missing from the log (the next one is {index}): deleted")
                break
            what = f"entry {index} ({kind.name.lower()} of {device}" + (
                f" seq {logged.seq})" if logged.seq is not None else ")")
            if logged.entry is None:
                report.problems.append(f"{what}: the store no longer holds it (deleted after logging)")
            elif leaf_hash(logged.entry) != logged.leaf:
                report.problems.append(f"{what}: the store holds other bytes than the log recorded (edited after "
                                       "logging: its bytes, its arrival time or its place)")
            leaf = logged.leaf if logged.entry is None else leaf_hash(logged.entry)  # the evidence, not the record
            for level, position, node in push(frontier, index, leaf)[1:]:
                if level % STRIDE == 0 and kept.get((level, position)) != node:
                    report.problems.append(f"the log's node ({level}, {position}) is not the hash of its entries")
            size += 1
            heads[device] = (heads.get(device) or DeviceHead(device, 0, index, None)).after(index, logged.seq)
            touched.add(device)
        while upcoming is not None and upcoming.tree_size == size:
            check(upcoming)
            upcoming = next(pending, None)
        report.entries = size
        if upcoming is not None:
            report.problems.append(f"a checkpoint signs {upcoming.tree_size} entries, the log holds {size}: "
                                   "entries deleted")
        return report
