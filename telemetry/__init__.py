"""telemetry — the whole wire contract, pure (no I/O): every message between devices and the lender, defined once.

numbers (content formats, tags, labels, paths), cbor (deterministic, bounded), senml, cose (COSE_Sign1 and
COSE_Sign), envelope (the signed envelope and its verdict), chain, ack (the lender's answer to a batch), clock (the
clock statement), alarms (the alarm vocabulary), enrollment (requests, responses, site files, installation reports),
identity (Ed25519 keys from bytes). Each message is pinned by a vector in tests/vectors/.
"""
from telemetry.cbor import Limits
from telemetry.chain import ChainProblem, ChainReport, check_chain
from telemetry.envelope import (
    GENESIS,
    Envelope,
    Gap,
    GapReason,
    Reason,
    Verdict,
    decode,
    seal,
    verify,
)
from telemetry.exc import TelemetryError, WireFormatError
from telemetry.identity import DeviceKey, Identity, kid_of
from telemetry.senml import Record

__all__ = [
    "GENESIS", "ChainProblem", "ChainReport", "DeviceKey", "Envelope", "Gap", "GapReason", "Identity", "Limits",
    "Reason", "Record", "TelemetryError", "Verdict", "WireFormatError", "check_chain", "decode", "kid_of", "seal", "verify",
]
