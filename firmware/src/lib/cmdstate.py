"""What the node remembers of the lender's signed commands (issue 15), in flash: state/commands.bin.

The last command seq it applied (a command is applied only above it: a
replayed, reordered or older one is refused), the outcome it owes the lender
(signed into the next envelope as the `command.*` records, then cleared), the
permits in force and the lender's configuration of its own intervals and
thresholds (with its digest, and the one before it for rollback).

A two-slot record as chain.bin (chainstate): every save writes the slot the
previous one did not, with a generation one higher and a 4-byte check
(SHA-256 prefix); loading takes the valid slot with the higher generation. A
command is applied by one save (its seq, its outcome owed, the permit or
configuration it brings), so a power cut leaves the state before it or after
it, never between, and never applies a command twice. Slot: "PWK1",
generation u32, length u16, that many bytes of JSON, check; 768 bytes,
read and written one slot at a time (a fragmented heap lacks large blocks first).

The cycle runs `startup` at the start of a wake, only when commands.bin or
command.bin exists, and releases this module (and commands, and the
verifier) before sampling: the send phase stays the cycle's peak. startup
first verifies and applies the command the previous wake's send phase kept
in command.bin (the commands module: a fresh heap has room for Ed25519
verification; right after the modem session it has not), then returns the
records of the outcome owed, for this wake's envelope. The owed outcome names
the seq of the envelope it goes into ("in"); the next startup clears it once
the chain head reached that seq (the envelope was committed), and owes it
again into a new envelope if a power cut lost that one: signed twice at
worst (the lender takes one command digest once), never not at all.
"""

import hashlib
import json
import struct

from errors import StorageError

MAGIC = b"PWK1"
SLOT = 768
MAX_DETAIL = 64  # characters of a refusal's reason kept for the record (telemetry allows 200)
PREFIX = "command."  # telemetry.command.RECORD_PREFIX
MAX_PERMITS = 3
KEPT = "command.bin"  # the command an ack brought, kept by the send phase for the next wake to verify and apply
MAX_KEPT = 384  # ack.MAX_COMMAND
# The node's own settings a lender's configuration may set: name -> (section, type, low, high) (config.py's ranges).
SETTINGS = {
    "interval_s": ("sampling", int, 10, 7 * 86400),
    "tilt_alarm_deg": ("rules", float, 1.0, 180.0),
    "motion_mg": ("rules", int, 16, 2000),
}


def _check(body):
    return hashlib.sha256(body).digest()[:4]


def _unpack(slot):
    """(fields, generation) of a valid slot, or (None, -1)."""
    if len(slot) < 10 or slot[:4] != MAGIC:
        return None, -1
    generation, length = struct.unpack(">IH", slot[4:10])
    end = 10 + length
    if end + 4 > len(slot) or _check(slot[:end]) != slot[end : end + 4]:
        return None, -1
    try:
        return json.loads(slot[10:end]), generation
    except ValueError:
        return None, -1


def startup(node, chain):
    """At the start of a wake: apply the command the last send phase kept (state/command.bin), then return the
    records of the outcome owed for this wake's envelope; the lender's configuration set on node.config, its permits
    on node.permits. An unreadable state is noted and ignored (no command is applied)."""
    kept = node._file(KEPT)
    try:
        with open(kept, "rb") as file:
            raw = file.read(MAX_KEPT + 1)
    except OSError:
        raw = None
    if raw is not None:
        import os

        try:
            # Gone before it is looked at: a command that fails here in any way (a cut, a bug, no heap) is not
            # retried at every wake; the lender hands it out again while it is unanswered.
            os.remove(kept)
        except OSError:
            pass
    try:
        state = CommandState(node._file("commands.bin"))
    except StorageError as error:
        node._note("command state", error)
        return []
    if raw is not None:
        import commands

        node.applying = True  # no quick wake again for this one, whatever the outcome
        try:
            node.report["command"] = commands.receive(node, state, raw)
        except StorageError as error:
            node._note("command", error)
        del commands, raw
    owed = state.owed
    if owed is not None:
        try:
            if owed.get("in") and chain.head_seq >= owed["in"]:
                state.reported()  # the envelope that carried it is committed: owed no more
            elif owed.get("in") != chain.next_seq:
                owed["in"] = chain.next_seq  # the seq this wake signs it into (a cut loses it: owed again)
                state.save()
        except StorageError as error:
            node._note("command state", error)
    state.apply_settings(node.config)
    node.permits = state.permits
    return state.records()


def keep(node):
    """Keep the command an ack brought (node.command) in flash for the next wake to verify and apply; a torn write
    only fails its verification there (the lender hands it out again)."""
    try:
        with open(node._file(KEPT), "wb") as file:
            file.write(node.command)
        node.report["command_kept"] = len(node.command)
    except OSError as error:
        node._note("command", error)
    node.command = None


def permitted(permits, at, sensor):
    """Whether one of `permits` ([from, until, inputs]) covers an opening of `sensor` (tamper, motion, tilt) at `at`."""
    if at is None or not permits:
        return False  # no clock: no window can be told apart from its outside
    for start, until, inputs in permits:
        if start <= at < until and (not inputs or sensor in inputs):
            return True
    return False


class CommandState:
    def __init__(self, path):
        self.path = path
        self.generation = 0
        self.last_seq = 0
        self.owed = None  # {"seq", "kind", "digest" hex, "outcome", ?"nonce" hex, ?"detail", ?"config" hex, ?"in"}
        self.permits = []  # [[from, until, [input, ...]]] (the lender sent them for this node's asset)
        self.config = None  # {setting: value} of the lender's configuration in force
        self.config_digest = None  # its digest (hex)
        self.previous = None  # [config, digest] of the one before it (rollback)
        self._load()

    def _load(self):
        best, newest, empty = None, -1, False
        try:
            with open(self.path, "rb") as file:
                for _ in (0, 1):
                    slot = file.read(SLOT)
                    empty = empty or not slot.strip(b"\x00")
                    fields, generation = _unpack(slot)
                    if fields is not None and generation > newest:
                        best, newest = fields, generation
        except OSError:
            return  # no command yet
        if best is None:
            # An empty slot beside a damaged one: the first save cut short, before any command was applied.
            if not empty:
                # Both damaged: the last applied seq is unknown, so a replayed command could be taken again.
                # Refuse to guess: no command is applied (the cycle logs it) until the node is provisioned again.
                raise StorageError("both slots of %s are damaged: the command state is lost" % self.path)
            return
        self.generation = newest
        self.last_seq = best["last"]
        self.owed = best["owed"]
        self.permits = best["permits"]
        self.config = best["config"]
        self.config_digest = best["digest"]
        self.previous = best["previous"]

    def save(self):
        """Write the record into the other slot (one step: a cut tears that slot only, the other stays)."""
        body = json.dumps({"last": self.last_seq, "owed": self.owed, "permits": self.permits, "config": self.config,
                           "digest": self.config_digest, "previous": self.previous}).encode()
        generation = self.generation + 1
        record = MAGIC + struct.pack(">IH", generation, len(body)) + body
        record += _check(record)
        if len(record) > SLOT:
            raise StorageError("the command state (%d bytes) does not fit its %d-byte slot" % (len(record), SLOT))
        try:
            try:
                file = open(self.path, "r+b")
            except OSError:
                file = open(self.path, "wb")
                for _ in range(2 * SLOT // 128):
                    file.write(bytes(128))
            with file:
                file.seek((generation % 2) * SLOT)
                file.write(record)
        except OSError as error:
            raise StorageError("cannot write the command state to %s: %s" % (self.path, error))
        self.generation = generation

    def apply_settings(self, config):
        """Set the lender's configuration in force on the node's Config (its intervals and thresholds)."""
        for name, value in (self.config or {}).items():
            if name in SETTINGS:
                setattr(config, name, float(value) if SETTINGS[name][1] is float else value)

    def permitted(self, at, sensor):
        """Whether a lender's permit in force covers an opening of `sensor` (tamper, motion, tilt) at unix time `at`."""
        return permitted(self.permits, at, sensor)

    def records(self):
        """The `command.*` records (telemetry.command.outcome_records) of the outcome owed, or []."""
        owed = self.owed
        if owed is None:
            return []
        import binascii

        records = [
            {"name": PREFIX + "seq", "value": owed["seq"]},
            {"name": PREFIX + "kind", "string": owed["kind"]},
            {"name": PREFIX + "digest", "data": binascii.unhexlify(owed["digest"])},
            {"name": PREFIX + "outcome", "string": owed["outcome"]},
        ]
        if owed.get("nonce") is not None:
            records.append({"name": PREFIX + "nonce", "data": binascii.unhexlify(owed["nonce"])})
        # A permit's asset and window are not repeated (a gateway signs them): the digest names the exact command
        # the lender keeps, and a node's envelope stays small enough for its heap to send (docs/firmware.md).
        if owed.get("config") is not None:
            records.append({"name": PREFIX + "config", "data": binascii.unhexlify(owed["config"])})
        if owed.get("detail"):
            records.append({"name": PREFIX + "detail", "string": owed["detail"][:200]})
        return records

    def reported(self):
        """The outcome owed is signed into a committed envelope: owed no more (saved)."""
        if self.owed is not None:
            self.owed = None
            self.save()
