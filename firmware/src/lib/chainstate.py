"""The node's chain state in flash: boot counter, next seq, chain head (seq, prev-hash), a reserved seq, an unreported gap.

A two-slot record: every save writes the slot the previous save did not,
with a generation number one higher and a 4-byte check (SHA-256 prefix, the
one hash every port has); loading takes the valid slot with the higher
generation. A power cut tears at most the slot being written, so the other
one, one save older, survives.

Never reusing a seq rests on the order the cycle follows:

1. `reserve()` saves next_seq + 1 with the seq marked pending, *before* signing;
2. the envelope is signed and appended to the outbox;
3. `commit()` moves the chain head to it (its digest becomes prev) and clears
   the pending mark.

After a power cut `recover(outbox)` looks for the pending seq in the outbox:
there, the head moves to it (step 3 redone); absent, it was signed but never
stored, so it is lost for good and recorded as a "power-loss" gap that the
next envelope reports. Either way the seq is never signed again.

Layout (big-endian, 128-byte slots): magic "PWC1", generation u32, boot u32,
next_seq u64, head_seq u64, prev 16 bytes, pending u64 (0: none), gap reason
u8 (0: none), gap first u64, gap last u64, gap count u32, check 4 bytes.
"""

import hashlib
import struct

from errors import StorageError

MAGIC = b"PWC1"
SLOT = 128
_FORMAT = ">4sIIQQ16sQBQQI"
_SIZE = struct.calcsize(_FORMAT)
GAP_REASONS = ("", "overflow", "power-loss", "storage-failure")
GENESIS = bytes(16)


def digest(raw):
    """The chain link of an envelope (docs/wire-format.md): SHA-256 of its exact bytes, first 16 bytes.

    The same as envelope.digest; repeated here so the chain state needs none of the signing code in memory.
    """
    return hashlib.sha256(raw).digest()[:16]


def _check(body):
    return hashlib.sha256(body).digest()[:4]


class ChainState:
    def __init__(self, path):
        self.path = path
        self.generation = 0
        self.boot = 0
        self.next_seq = 1
        self.head_seq = 0
        self.prev = GENESIS
        self.pending = 0
        self.gap = None  # [reason, first, last, count]
        self.fresh = True  # no valid record was found: a node's first start
        self._load()

    def _load(self):
        try:
            with open(self.path, "rb") as file:
                data = file.read(2 * SLOT)
        except OSError:
            return  # no file yet: a fresh node
        best = None
        for index in (0, 1):
            slot = data[index * SLOT : index * SLOT + _SIZE + 4]
            if len(slot) < _SIZE + 4 or slot[:4] != MAGIC or _check(slot[:_SIZE]) != slot[_SIZE:]:
                continue
            fields = struct.unpack(_FORMAT, slot[:_SIZE])
            if best is None or fields[1] > best[1]:
                best = fields
        if best is None:
            if data.strip(b"\x00"):
                raise StorageError("both slots of %s are damaged: the chain state is lost" % self.path)
            return
        (_, self.generation, self.boot, self.next_seq, self.head_seq, self.prev, self.pending,
         reason, first, last, count) = best
        self.gap = [GAP_REASONS[reason], first, last, count] if 0 < reason < len(GAP_REASONS) else None
        self.fresh = False

    def save(self):
        self.generation += 1
        if self.gap is None:
            reason, first, last, count = 0, 0, 0, 0
        else:
            reason = GAP_REASONS.index(self.gap[0])
            first, last, count = self.gap[1], self.gap[2], self.gap[3]
        body = struct.pack(_FORMAT, MAGIC, self.generation, self.boot, self.next_seq, self.head_seq,
                           bytes(self.prev), self.pending, reason, first, last, count)
        record = body + _check(body)
        record += bytes(SLOT - len(record))
        try:
            try:
                file = open(self.path, "r+b")
            except OSError:
                file = open(self.path, "wb")
                file.write(bytes(2 * SLOT))
            with file:
                file.seek((self.generation % 2) * SLOT)
                file.write(record)
        except OSError as error:
            raise StorageError("cannot write the chain state to %s: %s" % (self.path, error))
        self.fresh = False

    def note_gap(self, reason, first, last, count):
        """Remember lost seqs for the next envelope to report; a gap of the same reason widens the pending one."""
        if self.gap is None:
            self.gap = [reason, first, last, count]
        elif self.gap[0] == reason:
            self.gap = [reason, min(self.gap[1], first), max(self.gap[2], last), self.gap[3] + count]
        # A different reason waits: the pending gap is reported first, and this one is lost only as a detail
        # (its seqs still show as missing at the lender).

    def recover(self, outbox):
        """Finish what a power cut interrupted (see the module docstring). Saves nothing by itself."""
        if not self.pending:
            return None
        seq, self.pending = self.pending, 0
        if outbox.has(seq):
            self.head_seq = seq
            self.prev = digest(outbox.read(seq))
            return "recovered"
        self.note_gap("power-loss", seq, seq, 1)
        return "lost"

    def reserve(self):
        """The next seq, saved as used before anything is signed with it."""
        seq = self.next_seq
        self.next_seq = seq + 1
        self.pending = seq
        self.save()
        return seq

    def commit(self, seq, digest, gap_reported, losses=()):
        """The envelope seq is in the outbox: it is the chain head now.

        gap_reported: the envelope carried the pending gap, which is cleared;
        losses: (reason, first, last, count) the outbox dropped to make room,
        noted for a later envelope. One save for all of it.
        """
        self.head_seq = seq
        self.prev = digest
        self.pending = 0
        if gap_reported:
            self.gap = None
        for reason, first, last, count in losses:
            self.note_gap(reason, first, last, count)
        self.save()

    def gap_dict(self):
        if self.gap is None:
            return None
        reason, first, last, count = self.gap
        return {"reason": reason, "first": first, "last": last, "count": count}
