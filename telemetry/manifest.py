"""What a device declares about itself, signed in its manifest: heartbeat interval and the digest of its rules.

A gateway signs a manifest at every start (SenML records, beside its
`asset.<asset>.kind` / `asset.<asset>.sensors` records):

    device.heartbeat_s   value, unit "s": the longest the device stays silent; the lender expects an
                         envelope at least this often and calls the device silent after a few missed
    device.rules         string: `rules_digest` of the [[assets]] and [rules] tables the device runs

and, whenever `heartbeat_s` passes without another envelope, a heartbeat:

    device.heartbeat     value, unit "s": the device's uptime

The digest covers the tables as written (in the lender's site file, and in the
agent's config that the technician copied from it), so the lender can compare
what the device runs with what was enrolled, without trusting the device's
own judgement of it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping

from telemetry import cbor

HEARTBEAT_S = "device.heartbeat_s"
RULES = "device.rules"
HEARTBEAT = "device.heartbeat"
DEFAULT_HEARTBEAT_S = 300.0
DIGEST_HEX = 32


def _plain(value: object) -> object:
    """TOML data as CBOR-encodable plain data: numbers as floats (so 5 and 5.0 agree), times as ISO text."""
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.time, dt.datetime)):
        return value.isoformat()
    raise TypeError(f"a rules table holds {type(value).__name__}, which TOML does not make")


def rules_digest(assets: list | tuple, rules: Mapping) -> str:
    """The digest of the [[assets]] and [rules] tables (as parsed from TOML): hex, 32 digits."""
    data = cbor.encode({"assets": _plain(list(assets)), "rules": _plain(rules)})
    return hashlib.sha256(b"pledgewatch-rules/1" + data).hexdigest()[:DIGEST_HEX]
