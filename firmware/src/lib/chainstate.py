"""The node's chain state in flash: boot counter, next seq, chain head (seq, prev-hash), a reserved seq, an unreported
gap, the signed counters and the newest lender token.

A two-slot record: every save writes the slot the previous save did not,
with a generation number one higher and a 4-byte check (SHA-256 prefix, the
one hash every port has); loading takes the valid slot with the higher
generation. A power cut tears at most the slot being written, so the other
one, one save older, survives.

Never reusing a seq rests on the order the cycle follows:

1. `reserve()` saves next_seq + 1 with the seq marked pending, *before* signing,
   and in the same save the counters (alarm envelopes, gap records) that
   include the envelope about to be signed;
2. the envelope is signed and appended to the outbox;
3. `commit()` moves the chain head to it (its digest becomes prev) and clears
   the pending mark.

After a power cut `recover(outbox)` looks for the pending seq in the outbox:
there, the head moves to it (step 3 redone); absent, it was signed but never
stored, so it is lost for good and recorded as a "power-loss" gap that the
next envelope reports. Either way the seq is never signed again, and the
counters never go down: they were saved with the reservation, so an alarm
envelope lost to the cut stays counted (the lender sees it as signed and
never received), and a torn save leaves the previous record, whose counters
match the seqs it had reserved.

A full outbox makes room by overwriting its oldest routine envelope; the
reservation names that victim too (`reserve(victim=...)`), so a power cut
between the append and the commit cannot drop it silently: `recover` notes
an "overflow" gap for it when it is gone from the outbox (overwritten, or its
slot torn), and none when the append never happened.

A node's very first save cut short leaves one torn slot beside an empty one:
nothing was handed out yet, so that is a fresh node, not a lost record.

The lender token (telemetry.freshness) is the newest an ack brought, by the
lender time in its first 4 bytes (big-endian); `take_token` keeps only newer
ones. Rolling chain.bin back to an older copy rolls the token back with it,
which the lender sees.

Layout "PWC3" (big-endian, 128-byte slots): magic, generation u32, boot u32,
next_seq u64, head_seq u64, prev 16 bytes, pending u64 (0: none), gap reason
u8 (0: none), gap first u64, gap last u64, gap count u32, gap queued u32 (0:
unknown), gap alarms dropped u32, alarms u32, gaps u32, token 12 bytes (zeros:
none), outbox victim u64 (0: none), victim is an alarm u8, envelopes the
outbox held u32, check 4 bytes. A "PWC2" record (firmware before OSCORE) is
read with no victim; a "PWC1" record (before envelope version 2: no counters,
no token) as counters 0 and no token; either is rewritten as PWC3 at the next
save.
"""

import hashlib
import struct

from errors import StorageError

MAGIC = b"PWC3"
SLOT = 128
_FORMAT = ">4sIIQQ16sQBQQIIIII12sQBI"
_SIZE = struct.calcsize(_FORMAT)
_MAGIC_V2 = b"PWC2"
_FORMAT_V2 = ">4sIIQQ16sQBQQIIIII12s"
_SIZE_V2 = struct.calcsize(_FORMAT_V2)
_MAGIC_V1 = b"PWC1"
_FORMAT_V1 = ">4sIIQQ16sQBQQI"
_SIZE_V1 = struct.calcsize(_FORMAT_V1)
NO_TOKEN = bytes(12)
GAP_REASONS = ("", "overflow", "power-loss", "storage-failure", "refused")
GENESIS = bytes(16)


def digest(raw):
    """The chain link of an envelope (docs/wire-format.md): SHA-256 of its exact bytes, first 16 bytes.

    The same as envelope.digest; repeated here so the chain state needs none of the signing code in memory.
    """
    return hashlib.sha256(raw).digest()[:16]


def _check(body):
    return hashlib.sha256(body).digest()[:4]


def _unpack(slot):
    """(fields, generation) of a valid slot (an older layout widened to PWC3's), or None when empty or damaged."""
    magic = slot[:4]
    if magic == MAGIC:
        size, layout = _SIZE, _FORMAT
    elif magic == _MAGIC_V2:
        size, layout = _SIZE_V2, _FORMAT_V2
    elif magic == _MAGIC_V1:
        size, layout = _SIZE_V1, _FORMAT_V1
    else:
        return None
    if len(slot) < size + 4 or _check(slot[:size]) != slot[size : size + 4]:
        return None
    fields: list = list(struct.unpack(layout, slot[:size]))
    if magic == _MAGIC_V1:
        fields += [0, 0, 0, 0, NO_TOKEN]  # no counters, no token
    if magic != MAGIC:
        fields += [0, 0, 0]  # no outbox victim pending
    return fields, struct.unpack(">I", slot[4:8])[0]


class ChainState:
    def __init__(self, path):
        self.path = path
        self.generation = 0
        self.boot = 0
        self.next_seq = 1
        self.head_seq = 0
        self.prev = GENESIS
        self.pending = 0
        self.gap = None  # [reason, first, last, count, queued or 0, alarms dropped]
        self.alarms = 0  # alarm envelopes signed (or reserved for signing) so far
        self.gaps = 0  # gap records likewise
        self.token = None  # the newest lender token an ack brought (12 bytes)
        self.victim = None  # (seq, alarm, envelopes held) the pending append may overwrite in a full outbox
        self.fresh = True  # no valid record was found: a node's first start
        self._load()

    def _load(self):
        try:
            with open(self.path, "rb") as file:
                data = file.read(2 * SLOT)
        except OSError:
            return  # no file yet: a fresh node
        best = None
        newest = -1
        empty = 0
        for index in (0, 1):
            slot = data[index * SLOT : (index + 1) * SLOT]
            fields = _unpack(slot)
            if fields is None:
                empty += not slot.strip(b"\x00")
            elif fields[1] > newest:
                best, newest = fields[0], fields[1]
        if best is None:
            # Every cycle saves at least twice (reserve, commit), into alternate slots, before anything else: so an
            # empty slot beside a damaged one is a node's very first save cut short, before any seq was handed out.
            if not empty:
                raise StorageError("both slots of %s are damaged: the chain state is lost" % self.path)
            return
        (_, self.generation, self.boot, self.next_seq, self.head_seq, self.prev, self.pending,
         reason, first, last, count, queued, dropped, self.alarms, self.gaps, token, victim, victim_alarm,
         victim_queued) = best
        self.victim = (victim, victim_alarm, victim_queued) if victim else None
        self.gap = [GAP_REASONS[reason], first, last, count, queued, dropped] if 0 < reason < len(GAP_REASONS) else None
        self.token = None if token == NO_TOKEN else token
        self.fresh = False

    def save(self):
        self.generation += 1
        if self.gap is None:
            reason, first, last, count, queued, dropped = 0, 0, 0, 0, 0, 0
        else:
            reason = GAP_REASONS.index(self.gap[0])
            first, last, count, queued, dropped = self.gap[1:]
        victim, victim_alarm, victim_queued = self.victim or (0, 0, 0)
        body = struct.pack(_FORMAT, MAGIC, self.generation, self.boot, self.next_seq, self.head_seq,
                           bytes(self.prev), self.pending, reason, first, last, count, queued, dropped,
                           self.alarms, self.gaps, self.token or NO_TOKEN, victim, victim_alarm, victim_queued)
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

    def note_gap(self, reason, first, last, count, queued=0, alarms_dropped=0):
        """Remember lost seqs for the next envelope to report; a gap of the same reason widens the pending one.

        queued and alarms_dropped are an overflow's account (how many envelopes the outbox held when it dropped,
        how many of the dropped were alarms): merged as the most held and the sum dropped.
        """
        if self.gap is None:
            self.gap = [reason, first, last, count, queued, alarms_dropped]
        elif self.gap[0] == reason:
            gap = self.gap
            self.gap = [reason, min(gap[1], first), max(gap[2], last), gap[3] + count, max(gap[4], queued),
                        gap[5] + alarms_dropped]
        # A different reason waits: the pending gap is reported first, and this one is lost only as a detail
        # (its seqs still show as missing at the lender).

    def recover(self, outbox):
        """Finish what a power cut interrupted (see the module docstring). Saves nothing by itself."""
        if not self.pending:
            return None
        seq, self.pending = self.pending, 0
        victim, self.victim = self.victim, None
        if victim is not None and not outbox.has(victim[0]):
            # the append overwrote it (or tore its slot) before the commit could say so
            self.note_gap("overflow", victim[0], victim[0], 1, victim[2], victim[1])
        if outbox.has(seq):
            self.head_seq = seq
            self.prev = digest(outbox.read(seq))
            return "recovered"
        self.note_gap("power-loss", seq, seq, 1)
        return "lost"

    def reserve(self, alarm=False, gap=False, victim=None):
        """The next seq, saved as used before anything is signed with it, with the counters that include it.

        alarm: the envelope holds an alarm.* record; gap: it is a gap record (telemetry.envelope.Counters);
        victim: (seq, alarm, envelopes held) the append will overwrite in a full outbox (Outbox.victim), saved too,
        so a power cut between the append and the commit cannot drop it without its overflow gap (recover).
        """
        seq = self.next_seq
        self.next_seq = seq + 1
        self.pending = seq
        self.victim = victim
        if alarm:
            self.alarms += 1
        if gap:
            self.gaps += 1
        self.save()
        return seq

    def counters(self):
        """The counters of the envelope just reserved: {"alarms", "gaps"}, as envelope.seal takes them."""
        return {"alarms": self.alarms, "gaps": self.gaps}

    def take_token(self, token):
        """Keep token if it is newer (lender time, its first 4 bytes) than the one held; True if it was. Not saved."""
        if token is None or len(token) != len(NO_TOKEN) or (self.token is not None and token[:4] <= self.token[:4]):
            return False
        self.token = bytes(token)
        return True

    def commit(self, seq, digest, gap_reported, losses=()):
        """The envelope seq is in the outbox: it is the chain head now.

        gap_reported: the envelope carried the pending gap, which is cleared;
        losses: (reason, first, last, count, queued, alarms dropped) the outbox
        dropped to make room, noted for a later envelope. One save for all of it.
        """
        self.head_seq = seq
        self.prev = digest
        self.pending = 0
        self.victim = None  # what the append dropped is in losses
        if gap_reported:
            self.gap = None
        for loss in losses:
            self.note_gap(*loss)
        self.save()

    def gap_dict(self):
        if self.gap is None:
            return None
        reason, first, last, count, queued, dropped = self.gap
        gap = {"reason": reason, "first": first, "last": last, "count": count}
        if reason == "overflow" and queued:  # queued 0: an overflow noted before envelope version 2, unaccounted
            gap["queued"] = queued
            gap["alarms_dropped"] = dropped
        return gap
