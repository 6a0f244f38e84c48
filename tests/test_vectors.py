"""The shared wire-format vectors: the generator reproduces every committed byte, and every vector decodes to its description."""
import json
from pathlib import Path

import pytest

from telemetry import cbor
from telemetry.envelope import decode as decode_envelope, verify
from telemetry.identity import Identity
from telemetry.senml import records_from_cbor
from tests.vectors.generate import build, record_json

VECTORS = Path(__file__).parent / "vectors"
NAMES = sorted(p.stem for p in VECTORS.glob("*.json"))


def test_the_vector_set_is_complete():
    assert set(NAMES) == set(build())
    assert {json.loads((VECTORS / f"{n}.json").read_text())["kind"] for n in NAMES} >= {"envelope", "gap", "senml", "cose"}


@pytest.mark.parametrize("name", NAMES)
def test_the_generator_reproduces_the_committed_bytes(name):
    description, raw = build()[name]
    assert (VECTORS / f"{name}.cbor").read_bytes() == raw, "encoding changed: if intended, regenerate and update the firmware"
    assert json.loads((VECTORS / f"{name}.json").read_text()) == json.loads(json.dumps(description))


@pytest.mark.parametrize("name", [n for n in NAMES if json.loads((VECTORS / f"{n}.json").read_text())["kind"] in ("envelope", "gap")])
def test_every_envelope_vector_verifies_with_its_public_key(name):
    description = json.loads((VECTORS / f"{name}.json").read_text())
    identity = Identity(bytes.fromhex(description["seed_hex"]))
    assert identity.public_key.hex() == description["public_key_hex"]
    verdict = verify((VECTORS / f"{name}.cbor").read_bytes(), {identity.kid: identity.device_key(description["device"])})
    assert verdict.ok, verdict.detail
    envelope = verdict.envelope
    assert (envelope.seq, envelope.boot, envelope.prev.hex()) == (description["seq"], description["boot"], description["prev_hex"])
    assert [record_json(r) for r in envelope.records] == description["records"]


@pytest.mark.parametrize("name", NAMES)
def test_every_vector_names_its_signer_and_kind(name):
    description = json.loads((VECTORS / f"{name}.json").read_text())
    identity = Identity(bytes.fromhex(description["seed_hex"]))
    assert identity.public_key.hex() == description["public_key_hex"]
    assert description["kind"] in ("envelope", "gap", "senml", "cose")


def test_the_senml_vector_is_the_deterministic_pack_its_envelope_signs():
    description = json.loads((VECTORS / "senml-node-report.json").read_text())
    raw = (VECTORS / "senml-node-report.cbor").read_bytes()
    assert [record_json(r) for r in records_from_cbor(cbor.decode(raw))] == description["records"]
    envelope = decode_envelope((VECTORS / "envelope-node-report.cbor").read_bytes())
    assert cbor.encode(cbor.decode(envelope.payload)[5]) == raw
