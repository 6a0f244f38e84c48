"""The node's signed envelope: COSE_Sign1 (RFC 9052 §4.2) over a payload map, byte for byte as telemetry.envelope builds it.

    18([ bstr .cbor {1: -8, 4: kid}, {}, bstr .cbor {1: device, 2: boot,
         3: seq, 4: prev, 5: SenML pack, ?6: gap, ?7: clock,
         8: 2, 9: {1: alarms, 2: gaps}, ?10: token, ?11: binding}, bstr .size 64 ])

Keys 8..11 make a version 2 envelope (telemetry.envelope): given counters,
seal writes version 2 with them, and the lender token and enrollment binding
when the node holds them; without counters it writes version 1, as before.
With compact=True (what the node signs) it writes version 3 (8: 3): version
2 with key 5 holding the node readings map of telemetry.nodereadings,
{?0: time, number: value}, in place of the SenML pack, and the counters as
[alarms, gaps] in place of their map; records that do not
fit it (a name, unit or kind not in NODE_READINGS, times that differ, out of
the table's order) make version 2 as before.

kid is the first 8 bytes of SHA-256 of the Ed25519 public key, prev the first
16 bytes of SHA-256 of the device's previous envelope (16 zero bytes for its
first), and the signature covers ["Signature1", protected, h'', payload].
The caller owns the chain state (seq, prev); this module only builds bytes.
"""

import hashlib

import cbor

ALG_EDDSA = -8
HDR_ALG, HDR_KID = 1, 4
DEVICE, BOOT, SEQ, PREV, PACK, GAP, CLOCK = 1, 2, 3, 4, 5, 6, 7
VERSION, COUNTERS, TOKEN, BINDING = 8, 9, 10, 11
GAP_REASON, GAP_FIRST, GAP_LAST, GAP_COUNT, GAP_QUEUED, GAP_ALARMS_DROPPED = 1, 2, 3, 4, 5, 6
COUNT_ALARMS, COUNT_GAPS = 1, 2
CURRENT_VERSION = 2
NODE_VERSION = 3
# telemetry.nodereadings.NODE_READINGS: number -> (name, unit, "v" number / "vb" boolean); frozen, append only
NODE_READINGS = (
    (1, "temp", "Cel", "v"),
    (2, "tamper", None, "vb"),
    (3, "alarm.tamper", None, "vb"),
    (4, "batt", "V", "v"),
    (5, "alarm.motion", None, "vb"),
    (6, "alarm.tilt", "deg", "v"),
    (7, "device.heartbeat_s", "s", "v"),
)
READINGS_TIME = 0
TOKEN_BYTES = 12  # telemetry.freshness: lender time (u32, big-endian) + 8 bytes of the lender's MAC
BINDING_BYTES = 8  # telemetry.enrollment.binding_of
ALARM_PREFIX = "alarm."
DIGEST_BYTES = 16
GENESIS = bytes(DIGEST_BYTES)
MAX_DEVICE_ID = 64

_MAX_UINT = 0xFFFFFFFFFFFFFFFF
_INF = float("inf")
_NEG_INF = -_INF
_SIG1_CONTEXT = cbor.encode("Signature1")


def kid_of(public_key):
    """The key id of an Ed25519 public key: the first 8 bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:8]


def digest(raw):
    """The chain link of an envelope: the first 16 bytes of SHA-256 of its exact bytes."""
    return hashlib.sha256(raw).digest()[:DIGEST_BYTES]


def sig_structure(protected, payload, external_aad=b""):
    """The RFC 9052 §4.4 Sig_structure ["Signature1", protected, external_aad, payload] as bytes."""
    return b"".join(
        (
            b"\x84",
            _SIG1_CONTEXT,
            cbor.bstr_head(len(protected)),
            protected,
            cbor.bstr_head(len(external_aad)),
            external_aad,
            cbor.bstr_head(len(payload)),
            payload,
        )
    )


def cose_sign1(key, protected, unprotected, payload):
    """A tagged COSE_Sign1 message (bytes) over payload (bytes), signed by key (an ed25519.SigningKey)."""
    protected_bytes = cbor.encode(protected) if protected else b""
    signature = key.sign(sig_structure(protected_bytes, payload))
    return cbor.encode(cbor.Tag(18, [protected_bytes, unprotected, payload, signature]))


def _is_uint(value):
    return type(value) is int and 0 <= value <= _MAX_UINT


def gap_map(gap):
    """The payload's gap map {1: reason, ?2: first, ?3: last, ?4: count, ?5: queued, ?6: alarms dropped}
    from a dict with the names reason, first, last, count, queued, alarms_dropped."""
    reason = gap.get("reason")
    if not isinstance(reason, str) or not reason:
        raise ValueError("a gap record needs a text reason, got %r" % (gap,))
    item = {GAP_REASON: reason}
    for name, label in (("first", GAP_FIRST), ("last", GAP_LAST), ("count", GAP_COUNT), ("queued", GAP_QUEUED),
                        ("alarms_dropped", GAP_ALARMS_DROPPED)):
        value = gap.get(name)
        if value is not None:
            if not _is_uint(value):
                raise ValueError("gap %s must be an unsigned 64-bit integer, got %r" % (name, value))
            item[label] = value
    return item


def carries_alarm(records):
    """Whether records make an alarm envelope in the counters' sense (telemetry.envelope.carries_alarm)."""
    for record in records:
        if record["name"].startswith(ALARM_PREFIX):
            return True
    return False


def _fixed_bytes(value, size, what):
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ValueError("%s must be %d bytes, got %r" % (what, size, value))
    return bytes(value)


def readings(records):
    """The version 3 readings map of records (telemetry.nodereadings.to_cbor), or None when they do not fit it."""
    out = {}
    if not records:
        return out
    time = records[0].get("time")
    last = 0
    for record in records:
        name = record.get("name")
        entry = None
        for item in NODE_READINGS:
            if item[1] == name:
                entry = item
                break
        if entry is None or record.get("time") != time or record.get("unit") != entry[2]:
            return None
        for field in ("string", "data", "sum", "update_time"):
            if record.get(field) is not None:
                return None
        if entry[3] == "v":
            value = record.get("value")
            if type(value) is not float and type(value) is not int or record.get("boolean") is not None:
                return None
            if value != value or value == _INF or value == _NEG_INF:  # NaN, infinities (constants: nothing allocated)
                return None
        else:
            value = record.get("boolean")
            if value is not True and value is not False or record.get("value") is not None:
                return None
        if entry[0] <= last:
            return None
        last = entry[0]
        out[entry[0]] = value
    if time is not None:
        out[READINGS_TIME] = time
    return out


def seal(key, device, boot, seq, prev, records=(), gap=None, clock=None, counters=None, token=None, binding=None,
         compact=False):
    """Build and sign one envelope; returns its bytes. records are senml record dicts, gap a dict (see gap_map).

    counters {"alarms": n, "gaps": n} (this envelope included) make it version 2, which may carry the newest
    lender token held (12 bytes) and the enrollment binding (8 bytes); a token or binding without counters
    is a ValueError, as in telemetry. compact (with counters) makes it version 3 when the records fit
    the node readings table, version 2 when they do not.
    """
    if not isinstance(device, str) or not 0 < len(device) <= MAX_DEVICE_ID:
        raise ValueError("device id must be 1..%d characters, got %r" % (MAX_DEVICE_ID, device))
    if not (_is_uint(boot) and _is_uint(seq)):
        raise ValueError("boot and seq must be unsigned 64-bit integers, got %r and %r" % (boot, seq))
    if not isinstance(prev, (bytes, bytearray)) or len(prev) != DIGEST_BYTES:
        raise ValueError("prev must be %d bytes, got %r" % (DIGEST_BYTES, prev))
    pack = readings(records) if compact and counters is not None else None
    version = CURRENT_VERSION if pack is None else NODE_VERSION
    if pack is None:
        import senml  # version 1 and 2 only: a version 3 seal never loads the SenML code

        pack = senml.pack(records)
    body = {DEVICE: device, BOOT: boot, SEQ: seq, PREV: bytes(prev), PACK: pack}
    if gap is not None:
        body[GAP] = gap_map(gap)
    if clock is not None:
        body[CLOCK] = clock
    if counters is not None:
        alarms, gaps = counters.get("alarms"), counters.get("gaps")
        if not (_is_uint(alarms) and _is_uint(gaps)):
            raise ValueError("counters must be {alarms, gaps}, unsigned 64-bit integers, got %r" % (counters,))
        body[VERSION] = version
        body[COUNTERS] = [alarms, gaps] if version == NODE_VERSION else {COUNT_ALARMS: alarms, COUNT_GAPS: gaps}
        if token is not None:
            body[TOKEN] = _fixed_bytes(token, TOKEN_BYTES, "a lender token")
        if binding is not None:
            body[BINDING] = _fixed_bytes(binding, BINDING_BYTES, "the enrollment binding")
    elif token is not None or binding is not None:
        raise ValueError("a token or a binding needs a version 2 envelope: give its counters")
    protected = cbor.encode({HDR_ALG: ALG_EDDSA, HDR_KID: kid_of(key.public_key)})
    payload = cbor.encode(body)
    signature = key.sign(sig_structure(protected, payload))
    # == cbor.encode(Tag(18, [protected, {}, payload, signature])), framed directly
    return b"".join(
        (b"\xd2\x84", cbor.bstr_head(len(protected)), protected, b"\xa0", cbor.bstr_head(len(payload)), payload, b"\x58\x40", signature)
    )
