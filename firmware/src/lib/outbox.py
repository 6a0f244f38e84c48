"""The node's outbox: a bounded ring of fixed-size slots in one flash file, holding every envelope not yet acked.

One file of `slots` x 512 bytes, made at full size once, so the outbox never
grows and a full flash can never stop it. A slot is a 16-byte header (mark
0xA5, flags with bit 0 = alarm, seq u64, length u16, a 4-byte SHA-256 check
over the header and the envelope) and the envelope: up to 496 bytes, above
the largest envelope a node can sign (~405 bytes: a 64-character device id,
every alarm record, the heartbeat, a gap record, 64-bit seqs, counters, token
and binding; a typical version 2 report is ~200). A slot is 8 to a 4 KB flash
block, so a write never straddles two. A slot whose mark or check
is wrong is free: a write torn by a power cut costs that one slot (littlefs,
the ESP32 and RP2040 default, commits a file write atomically anyway).

When every slot is taken, room is made by dropping the oldest *routine*
envelope; alarms (tamper, gap records) are kept. Only when every slot holds an
alarm does the oldest alarm go, and a routine newcomer is dropped instead of
any alarm. `append` returns the dropped seqs so the node can report them as an
"overflow" gap (and `alarms_dropped` says how many of them were alarms: the
gap record says so, and the lender flags it). Delivery order (`seqs`): alarms
first, then oldest first.

Firmware before envelope version 2 kept 320-byte slots in `outbox.bin`; an
Outbox given that file as `legacy` moves its envelopes over and deletes it
(a power cut in between only repeats the move: a seq is never stored twice).
"""

import hashlib
import os
import struct

from errors import StorageError

SLOT = 512
LEGACY_SLOT = 320
_HEADER = ">BBQH"
_HEADER_SIZE = struct.calcsize(_HEADER) + 4  # + check
MAX_ENVELOPE = SLOT - _HEADER_SIZE
_MARK = 0xA5
_ALARM = 0x01


def _check(header, body):
    digest = hashlib.sha256(header)
    digest.update(body)
    return digest.digest()[:4]


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _entries(file, count, slot_size, bodies=False):
    """(slot index, seq, alarm, good, envelope if `bodies` and good) of every used slot of an outbox file.

    Every slot is read into one buffer: checking a full outbox allocates nothing per slot, so the index it builds
    is not scattered among freed envelopes (a fragmented heap fails the signer's tables later in the cycle).
    """
    slot = bytearray(slot_size)
    view = memoryview(slot)
    for index in range(count):
        file.seek(index * slot_size)
        got = file.readinto(slot)
        if got < _HEADER_SIZE or slot[0] != _MARK:
            continue
        _, flags, seq, length = struct.unpack(_HEADER, view[: _HEADER_SIZE - 4])
        end = _HEADER_SIZE + length
        good = end <= min(got, slot_size) and _check(view[: _HEADER_SIZE - 4], view[_HEADER_SIZE:end]) == bytes(
            view[_HEADER_SIZE - 4 : _HEADER_SIZE])
        yield index, seq, bool(flags & _ALARM), good, bytes(view[_HEADER_SIZE:end]) if good and bodies else None


class Outbox:
    def __init__(self, path, slots=48, legacy=None):
        if not 2 <= slots <= 1024:
            raise StorageError("an outbox has 2..1024 slots, got %r" % (slots,))
        self.path = path
        self.damaged = 0
        self.alarms_dropped = 0  # alarms among the seqs the last append dropped
        self._index = {}  # seq -> (slot, alarm)
        data_slots = _size(path) // SLOT
        if data_slots:
            try:
                with open(path, "rb") as file:
                    for index, seq, alarm, good, _ in _entries(file, data_slots, SLOT):
                        if good:
                            self._index[seq] = (index, alarm)
                        else:
                            self.damaged += 1
            except OSError as error:
                raise StorageError("cannot read the outbox %s: %s" % (path, error))
        legacy_slots = 0 if legacy is None else _size(legacy) // LEGACY_SLOT
        self.slots = max(slots, data_slots, legacy_slots)  # never shrink: that would drop evidence
        if data_slots < self.slots:
            self._grow(data_slots)
        if legacy_slots:
            self._adopt(legacy, legacy_slots)

    def _adopt(self, legacy, count):
        """Move the envelopes of a legacy outbox file (320-byte slots) into this one, then delete it."""
        try:
            with open(legacy, "rb") as file:
                for _, seq, alarm, good, body in _entries(file, count, LEGACY_SLOT, bodies=True):
                    if not good:
                        self.damaged += 1
                    elif seq not in self._index:
                        self.append(seq, body, alarm)
            os.remove(legacy)
        except OSError as error:
            raise StorageError("cannot move the old outbox %s: %s" % (legacy, error))

    def _grow(self, existing):
        try:
            with open(self.path, "ab") as file:
                for _ in range(self.slots - existing):
                    file.write(bytes(SLOT))
        except OSError as error:
            raise StorageError("cannot make the outbox %s: %s" % (self.path, error))

    def __len__(self):
        return len(self._index)

    def has(self, seq):
        return seq in self._index

    def is_alarm(self, seq):
        return self._index[seq][1]

    def seqs(self):
        """Every buffered seq in delivery order: alarms first, then routine, each oldest first (one list: a full
        outbox's seqs are a block of ~500 bytes on a 64-bit host, asked of the heap once, not three times)."""
        index = self._index
        return sorted(index, key=lambda seq: (not index[seq][1], seq))

    def read(self, seq):
        slot, _ = self._index[seq]
        try:
            with open(self.path, "rb") as file:
                file.seek(slot * SLOT)
                header = file.read(_HEADER_SIZE)
                mark, _, stored_seq, length = struct.unpack(_HEADER, header[:-4]) if len(header) == _HEADER_SIZE else (0, 0, 0, 0)
                body = file.read(min(length, MAX_ENVELOPE))
        except OSError as error:
            raise StorageError("cannot read the outbox %s: %s" % (self.path, error))
        if mark != _MARK or stored_seq != seq or len(body) != length or _check(header[:-4], body) != header[-4:]:
            del self._index[seq]
            self.damaged += 1
            raise StorageError("outbox slot %d (seq %d) is damaged" % (slot, seq))
        return body

    def victim(self, alarm):
        """(seq, alarm, envelopes held) that appending an envelope (alarm or not) would overwrite; None if none."""
        if len(self._index) < self.slots:
            return None
        seq = self._victim(alarm)
        return None if seq is None else (seq, int(self._index[seq][1]), len(self._index))

    def _victim(self, alarm):
        """(seq to drop, or None when the newcomer itself must go) for a full outbox."""
        routine = [seq for seq, (_, is_alarm) in self._index.items() if not is_alarm]
        if routine:
            return min(routine)
        if not alarm:
            return None
        return min(self._index)

    def append(self, seq, envelope, alarm=False):
        """Store one envelope; returns the seqs dropped to make room (possibly [seq] itself)."""
        if len(envelope) > MAX_ENVELOPE:
            raise StorageError("envelope seq %d is %d bytes; an outbox slot holds %d" % (seq, len(envelope), MAX_ENVELOPE))
        if seq in self._index:
            raise StorageError("seq %d is in the outbox already: a seq is never reused" % seq)
        dropped = []
        self.alarms_dropped = 0
        used = set(slot for slot, _ in self._index.values())
        free = [slot for slot in range(self.slots) if slot not in used]
        if free:
            slot = free[0]
        else:
            victim = self._victim(alarm)
            if victim is None:
                return [seq]
            slot, victim_alarm = self._index.pop(victim)
            dropped.append(victim)
            self.alarms_dropped = int(victim_alarm)
        header = struct.pack(_HEADER, _MARK, _ALARM if alarm else 0, seq, len(envelope))
        record = header + _check(header, envelope) + envelope
        try:
            with open(self.path, "r+b") as file:
                file.seek(slot * SLOT)
                file.write(record)
        except OSError as error:
            raise StorageError("cannot write the outbox %s: %s" % (self.path, error))
        self._index[seq] = (slot, alarm)
        return dropped

    def remove(self, seqs):
        """Free the slots of these seqs (those present); returns how many were freed."""
        slots = [self._index[seq][0] for seq in seqs if seq in self._index]
        if not slots:
            return 0
        try:
            with open(self.path, "r+b") as file:
                for slot in slots:
                    file.seek(slot * SLOT)
                    file.write(b"\x00")
        except OSError as error:
            raise StorageError("cannot update the outbox %s: %s" % (self.path, error))
        for seq in seqs:
            self._index.pop(seq, None)
        return len(slots)
