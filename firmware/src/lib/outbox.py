"""The node's outbox: a bounded ring of fixed-size slots in one flash file, holding every envelope not yet acked.

One file of `slots` x 320 bytes, made at full size once, so the outbox never
grows and a full flash can never stop it. A slot is a 16-byte header (mark
0xA5, flags with bit 0 = alarm, seq u64, length u16, a 4-byte SHA-256 check
over the header and the envelope) and the envelope. A slot whose mark or check
is wrong is free: a write torn by a power cut costs that one slot (littlefs,
the ESP32 and RP2040 default, commits a file write atomically anyway).

When every slot is taken, room is made by dropping the oldest *routine*
envelope; alarms (tamper, gap records) are kept. Only when every slot holds an
alarm does the oldest alarm go, and a routine newcomer is dropped instead of
any alarm. `append` returns the dropped seqs so the node can report them as an
"overflow" gap (and `alarms_dropped` says how many of them were alarms: the
gap record says so, and the lender flags it). Delivery order (`seqs`): alarms
first, then oldest first.
"""

import hashlib
import struct

from errors import StorageError

SLOT = 320
_HEADER = ">BBQH"
_HEADER_SIZE = struct.calcsize(_HEADER) + 4  # + check
MAX_ENVELOPE = SLOT - _HEADER_SIZE
_MARK = 0xA5
_ALARM = 0x01


def _check(header, body):
    return hashlib.sha256(header + body).digest()[:4]


class Outbox:
    def __init__(self, path, slots=48):
        if not 2 <= slots <= 1024:
            raise StorageError("an outbox has 2..1024 slots, got %r" % (slots,))
        self.path = path
        self.damaged = 0
        self.alarms_dropped = 0  # alarms among the seqs the last append dropped
        self._index = {}  # seq -> (slot, alarm)
        try:
            with open(path, "rb") as file:
                data_slots = self._scan(file)
        except OSError:
            data_slots = 0
        self.slots = max(slots, data_slots)  # never shrink: that would drop evidence
        if data_slots < self.slots:
            self._grow(data_slots)

    def _scan(self, file):
        count = 0
        while True:
            slot = file.read(SLOT)
            if len(slot) < SLOT:
                return count
            mark, flags, seq, length = struct.unpack(_HEADER, slot[: _HEADER_SIZE - 4])
            if mark == _MARK:
                body = slot[_HEADER_SIZE : _HEADER_SIZE + length]
                if length <= MAX_ENVELOPE and _check(slot[: _HEADER_SIZE - 4], body) == slot[_HEADER_SIZE - 4 : _HEADER_SIZE]:
                    self._index[seq] = (count, bool(flags & _ALARM))
                else:
                    self.damaged += 1
            count += 1

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
        """Every buffered seq in delivery order: alarms first, then routine, each oldest first."""
        alarms = sorted(seq for seq, (_, alarm) in self._index.items() if alarm)
        routine = sorted(seq for seq, (_, alarm) in self._index.items() if not alarm)
        return alarms + routine

    def read(self, seq):
        slot, _ = self._index[seq]
        try:
            with open(self.path, "rb") as file:
                file.seek(slot * SLOT)
                data = file.read(SLOT)
        except OSError as error:
            raise StorageError("cannot read the outbox %s: %s" % (self.path, error))
        header = data[: _HEADER_SIZE - 4]
        mark, _, stored_seq, length = struct.unpack(_HEADER, header)
        body = data[_HEADER_SIZE : _HEADER_SIZE + length]
        if mark != _MARK or stored_seq != seq or _check(header, body) != data[_HEADER_SIZE - 4 : _HEADER_SIZE]:
            del self._index[seq]
            self.damaged += 1
            raise StorageError("outbox slot %d (seq %d) is damaged" % (slot, seq))
        return body

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
