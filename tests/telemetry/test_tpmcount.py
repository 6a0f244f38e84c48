"""The TPM counter statement (telemetry.tpmcount): the shared vector verifies, and nothing edited, moved or made by
another key does."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from telemetry import cbor, tpmcount
from telemetry.identity import P256Identity

VECTOR = Path(__file__).parent.parent / "vectors" / "tpm-counter-v1"
DESCRIPTION = json.loads(VECTOR.with_suffix(".json").read_text())
RAW = VECTOR.with_suffix(".cbor").read_bytes()
KEY = bytes.fromhex(DESCRIPTION["public_key_hex"])
PLACE = {"device": DESCRIPTION["device"], "boot": DESCRIPTION["boot"], "seq": DESCRIPTION["seq"],
         "prev": bytes.fromhex(DESCRIPTION["prev_hex"])}


def test_the_vector_verifies_and_says_its_count():
    statement = tpmcount.read_statement(RAW, KEY, **PLACE)
    assert (statement.index, statement.count) == (DESCRIPTION["index"], DESCRIPTION["count"])
    assert tpmcount.encode(bytes.fromhex(DESCRIPTION["nv_public_hex"]), bytes.fromhex(DESCRIPTION["attest_hex"]),
                           bytes.fromhex(DESCRIPTION["signature_hex"])) == RAW


@pytest.mark.parametrize("place, why", [
    ({"seq": DESCRIPTION["seq"] + 1}, "another place in the chain"),
    ({"boot": DESCRIPTION["boot"] - 1}, "another place in the chain"),
    ({"device": "gw-tpm-2"}, "another place in the chain"),
    ({"prev": bytes(32)}, "another place in the chain"),
])
def test_a_statement_moved_elsewhere_in_the_chain_is_refused(place, why):
    with pytest.raises(tpmcount.CounterStatementError, match=why):
        tpmcount.read_statement(RAW, KEY, **{**PLACE, **place})


def test_every_edited_byte_of_the_certification_and_another_key_are_refused():
    _, nv_public, attest, signature = cbor.decode(RAW)
    for at in range(len(attest)):
        edited = attest[:at] + bytes([attest[at] ^ 0x01]) + attest[at + 1:]
        with pytest.raises(tpmcount.CounterStatementError):
            tpmcount.read_statement(tpmcount.encode(nv_public, edited, signature), KEY, **PLACE)
    with pytest.raises(tpmcount.CounterStatementError, match="does not verify"):
        tpmcount.read_statement(RAW, P256Identity(bytes(31) + b"\x07").public_key, **PLACE)


def test_a_counter_public_area_that_is_not_a_counter_or_not_certified_is_refused():
    """The agent's own TPM key signs anything root asks: what the lender relies on is the attestation key's
    certification of an NV index whose public area (name) says it is a counter that only goes up."""
    _, nv_public, attest, signature = cbor.decode(RAW)
    ordinary = nv_public[:6] + struct.pack(">I", struct.unpack(">I", nv_public[6:10])[0] & ~0xF0) + nv_public[10:]
    with pytest.raises(tpmcount.CounterStatementError, match="not the one whose public area"):
        tpmcount.read_statement(tpmcount.encode(ordinary, attest, signature), KEY, **PLACE)
    for bad, why in ((cbor.encode([2, nv_public, attest, signature]), "version 2"),
                     (cbor.encode([1, nv_public, attest]), "not \\[version"),
                     (b"\xff", "not CBOR")):
        with pytest.raises(tpmcount.CounterStatementError, match=why):
            tpmcount.read_statement(bad, KEY, **PLACE)
