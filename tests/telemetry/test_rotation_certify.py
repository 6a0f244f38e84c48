"""A TPM gateway's handover carries TPM2_Certify of its new key (telemetry.rotation `key.next.certify`): the shared
vector's certification verifies against the TPM's attestation key and no other; a v1 reader follows it unchanged."""
import json
from pathlib import Path

import pytest

from telemetry.envelope import verify
from telemetry.identity import DeviceKey
from telemetry.rotation import RotationError, follow, read_certification, read_handover

VECTOR = Path(__file__).parent.parent / "vectors" / "envelope-es256-handover-certified"


def vector():
    description = json.loads(VECTOR.with_suffix(".json").read_text())
    raw = VECTOR.with_suffix(".cbor").read_bytes()
    old = DeviceKey(description["device"], bytes.fromhex(description["public_key_hex"]))
    verdict = verify(raw, {old.kid: old})
    assert verdict.ok, verdict.detail
    return description, raw, old, read_handover(verdict.envelope)


def test_the_vectors_certification_verifies_against_its_attestation_key_only():
    description, raw, old, handover = vector()
    assert handover.new_key.public_key.hex() == description["new_public_key_hex"]
    read_certification(handover, bytes.fromhex(description["attestation_key_hex"]))
    with pytest.raises(RotationError, match="does not verify"):
        read_certification(handover, bytes.fromhex(description["public_key_hex"]))   # another P-256 key
    assert follow([raw], old).ok   # the record is optional: a follower that ignores it follows the handover


def test_a_certification_moved_to_another_handover_or_to_none_proves_nothing():
    import dataclasses
    description, _, _, handover = vector()
    ak = bytes.fromhex(description["attestation_key_hex"])
    with pytest.raises(RotationError, match="another handover"):
        read_certification(dataclasses.replace(handover, command_digest=bytes(32)), ak)
    with pytest.raises(RotationError, match="carries no"):
        read_certification(dataclasses.replace(handover, certification=None), ak)
    with pytest.raises(RotationError, match="not CBOR|not \\[version"):
        read_certification(dataclasses.replace(handover, certification=b"\x01\x02"), ak)
