"""The envelope file a spool crash test hands its child: pre-built envelopes, read back without `telemetry`.

The parent writes it once (`write_envelope_file`); the child
(tests/agent/spool_crash_child.py) reads it (`read_envelope_file`) and so
imports nothing but the spool and this module, and starts fast.
"""
from __future__ import annotations

import struct

RECORD = struct.Struct(">QBH16s")  # seq, alarm, len(raw), digest; then raw


class FileEnvelope:
    """An envelope read back from the envelope file (the spool's duck type)."""

    __slots__ = ("seq", "alarm", "raw", "digest")

    def __init__(self, seq: int, alarm: bool, raw: bytes, digest: bytes) -> None:
        self.seq, self.alarm, self.raw, self.digest = seq, alarm, raw, digest


def write_envelope_file(path: str, envelopes) -> None:
    """Write envelopes with consecutive seqs from 0 (the parent calls this once)."""
    with open(path, "wb") as f:
        for expected, e in enumerate(envelopes):
            assert e.seq == expected
            f.write(RECORD.pack(e.seq, int(e.alarm), len(e.raw), e.digest) + e.raw)


def read_envelope_file(path: str) -> list[FileEnvelope]:
    with open(path, "rb") as f:
        data = f.read()
    out, offset = [], 0
    while offset < len(data):
        seq, alarm, size, digest = RECORD.unpack_from(data, offset)
        offset += RECORD.size
        out.append(FileEnvelope(seq, bool(alarm), data[offset:offset + size], digest))
        offset += size
    return out
