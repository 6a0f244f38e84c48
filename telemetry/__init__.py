"""telemetry — the wire contract: SenML packs, the signed envelope, the hash chain, device identity. Pure code, no I/O
(except reading and writing key files in `telemetry.identity`)."""
from telemetry.cbor import Limits
from telemetry.chain import ChainProblem, ChainReport, check_chain
from telemetry.envelope import GENESIS, Envelope, Gap, GapReason, Reason, Verdict, decode, seal, verify
from telemetry.exc import TelemetryError, WireFormatError
from telemetry.identity import DeviceKey, Identity, kid_of
from telemetry.senml import Record

__all__ = [
    "GENESIS", "ChainProblem", "ChainReport", "DeviceKey", "Envelope", "Gap", "GapReason", "Identity", "Limits",
    "Reason", "Record", "TelemetryError", "Verdict", "WireFormatError", "check_chain", "decode", "kid_of", "seal", "verify",
]
