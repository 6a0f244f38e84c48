"""The telemetry package's one exception tree.

`WireFormatError` is the only family a decoder raises for untrusted bytes, so
a receiver needs exactly one `except` to reject bad input. Leaves subclass the
matching builtin as well (`ValueError`, `PermissionError`).
"""
from __future__ import annotations


class TelemetryError(Exception):
    """Base of every error raised by `telemetry`."""


class WireFormatError(TelemetryError, ValueError):
    """Bytes from outside are not a well-formed pledgewatch message."""


class OversizeError(WireFormatError):
    """The input is larger than the configured cap; nothing was decoded."""


class CBORError(WireFormatError):
    """The bytes are not well-formed CBOR, or use CBOR this decoder refuses."""


class LimitError(WireFormatError):
    """The CBOR nests deeper or holds more items than the decoder allows."""


class DuplicateKeyError(WireFormatError):
    """A CBOR map repeats a key (RFC 8949 §5.6: invalid for our protocol)."""


class SchemaError(WireFormatError):
    """Well-formed CBOR, but not the structure the wire contract defines."""


class SenMLError(SchemaError):
    """A SenML pack breaks RFC 8428 (name characters, missing value, unknown unit...)."""


class IdentityError(TelemetryError, ValueError):
    """A device key is malformed (a seed or a public key that is not 32 bytes).
    Key files and their errors belong to `durable.keyfile`."""


class SignatureError(WireFormatError):
    """A signed message is well formed but not signed by the key it must be signed by."""


class EnrollmentFormatError(SchemaError):
    """Bytes that should be an enrollment request, response, site file or installation report are not one."""


class AckFormatError(SchemaError):
    """The lender's answer to a batch is not a well-formed ack for that batch."""


class ClockStatementError(SchemaError):
    """An envelope's clock statement (payload key 7) is not the map the contract defines."""


class ReceiptError(SchemaError):
    """A signed checkpoint or a COSE receipt is malformed, not signed by the lender's key, or does not prove its entry."""


class BundleFormatError(SchemaError):
    """An evidence bundle is not the JSON document docs/evidence.md defines (its findings are data, not this error)."""


class CommandError(SchemaError):
    """Bytes that should be a lender's command are not one signed by the lender's key, or not well formed."""


class CommandRefused(CommandError):
    """A genuine command this device must not apply: for another device, not newer than the last applied, or expired."""
