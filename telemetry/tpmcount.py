"""The TPM counter statement, version 1: how many envelope signatures a gateway's TPM had counted (issue 14).

A gateway whose key is in a TPM increments an NV counter (TPM_NT_COUNTER)
before every envelope signature (durable.tpmcounter). In the first envelope of
each boot it puts one record:

    tpm.counter   data: CBOR [1, nv_public, attest, signature]

* `nv_public`  the counter's TPMS_NV_PUBLIC as the TPM marshals it (index, nameAlg, attributes, authPolicy,
               dataSize); the TPM names the index SHA-256 over these bytes;
* `attest`     the TPMS_ATTEST of TPM2_NV_Certify (type TPM_ST_ATTEST_NV), 8 bytes at offset 0: the count
               of signatures made before this envelope's own;
* `signature`  the TPMT_SIGNATURE of `attest` by the attestation key enrolled with the device (ECDSA P-256,
               SHA-256): a restricted key, so the TPM signs only what it generated itself.

The certification's qualifying data is `qualifying_data(device, boot, seq, prev)` of the envelope that carries
it: a statement cannot be moved to another place in the chain, or to another device. `read_statement` checks
one against the enrolled attestation key and the carrying envelope's fields. Pure: no TPM, no I/O.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from telemetry import cbor
from telemetry.exc import TelemetryError
from telemetry.tpm import ALG_SHA256, Reader, attested

RECORD = "tpm.counter"
VERSION = 1
QUALIFYING_PREFIX = b"pledgewatch-tpm-counter/1"
ST_ATTEST_NV = 0x8014
NT_COUNTER = 0x1
NV_TPM_NT_MASK, NV_TPM_NT_SHIFT, NV_ORDERLY = 0x000000F0, 4, 0x04000000


class CounterStatementError(TelemetryError):
    """A counter statement that is malformed or does not prove what it says (one line, for the lender's risk)."""


def qualifying_data(device: str, boot: int, seq: int, prev: bytes) -> bytes:
    """What the TPM certifies the counter over: SHA-256 of the prefix and CBOR [device, boot, seq, prev]."""
    return hashlib.sha256(QUALIFYING_PREFIX + cbor.encode([device, boot, seq, bytes(prev)])).digest()


def encode(nv_public: bytes, attest: bytes, signature: bytes) -> bytes:
    """The record's data."""
    return cbor.encode([VERSION, bytes(nv_public), bytes(attest), bytes(signature)])


@dataclass(frozen=True, slots=True)
class CounterStatement:
    """A verified statement: the TPM's counter `index` (named `nv_name`) held `count` before envelope `seq`."""

    index: int
    nv_name: bytes
    count: int
    reset_count: int
    restart_count: int
    clock_ms: int


def _decode(data: bytes) -> tuple[bytes, bytes, bytes]:
    try:
        item = cbor.decode(bytes(data))
    except Exception as exc:  # telemetry.cbor raises its own errors on malformed input
        raise CounterStatementError(f"the {RECORD} record is not CBOR: {exc}") from None
    if not isinstance(item, list) or len(item) != 4 or type(item[0]) is not int:
        raise CounterStatementError(f"the {RECORD} record is not [version, nv_public, attest, signature]")
    if item[0] != VERSION:
        raise CounterStatementError(f"the {RECORD} record is version {item[0]}, this reader knows {VERSION}")
    if not all(isinstance(part, bytes) for part in item[1:]):
        raise CounterStatementError(f"the {RECORD} record's parts are not byte strings")
    return item[1], item[2], item[3]


def read_statement(data: bytes, attestation_key: bytes, *, device: str, boot: int, seq: int,
                   prev: bytes) -> CounterStatement:
    """Check a `tpm.counter` record's data, carried by envelope (`device`, `boot`, `seq`, `prev`), against the
    enrolled `attestation_key` (65-byte P-256 point); CounterStatementError says why it proves nothing."""
    nv_public, attest, signature = _decode(data)
    read = attested(attest, signature, attestation_key, ST_ATTEST_NV, "the certification",
                    CounterStatementError)
    read.sized()  # the attestation key's qualified name: its signature was checked above
    if read.sized() != qualifying_data(device, boot, seq, prev):
        raise CounterStatementError(f"the certification was made for another place in the chain than seq {seq} "
                                    f"of boot {boot} (its qualifying data differ)")
    clock, reset_count, restart_count, _safe = struct.unpack(">QIIB", read.take(17))
    read.take(8)  # firmware version
    index_name, offset, contents = read.sized(), read.uint(2), read.sized()
    read.end()
    public = Reader(nv_public, "counter's public area", CounterStatementError)
    index, name_alg, attributes = public.uint(4), public.uint(2), public.uint(4)
    public.sized()  # authPolicy
    size = public.uint(2)
    public.end()
    if name_alg != ALG_SHA256 or index_name != struct.pack(">H", ALG_SHA256) + hashlib.sha256(nv_public).digest():
        raise CounterStatementError("the certified NV index is not the one whose public area the statement carries")
    if (attributes & NV_TPM_NT_MASK) >> NV_TPM_NT_SHIFT != NT_COUNTER or size != 8:
        raise CounterStatementError(f"NV index {index:#x} is not a counter (any value could be written there)")
    if attributes & NV_ORDERLY:
        raise CounterStatementError(f"NV index {index:#x} is an orderly counter (it jumps after a power cut)")
    if offset != 0 or len(contents) != 8:
        raise CounterStatementError("the certification is not of the whole counter")
    return CounterStatement(index, index_name, int.from_bytes(contents, "big"), reset_count, restart_count, clock)


__all__ = ["RECORD", "VERSION", "CounterStatement", "CounterStatementError", "encode", "qualifying_data",
           "read_statement"]
