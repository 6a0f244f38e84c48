"""The shared wire-format vectors: the generator reproduces every committed byte, and every vector decodes to its description."""
import base64
import json
from pathlib import Path

import pytest

from telemetry import cbor
from telemetry.ack import Ack, Reason
from telemetry.bundle import verify_bundle
from telemetry.clock import ClockStatement
from telemetry.command import Command, accept
from telemetry.enrollment import REQUEST_AAD, EnrollmentRequest, EnrollmentResponse, SiteRequest, binding_of, signer_verifies
from telemetry.freshness import issue_token, token_genuine, token_time
from telemetry.exc import EnrollmentFormatError
from telemetry.envelope import decode as decode_envelope, verify
from telemetry.identity import Identity
from telemetry.logentry import EntryKind, LogEntry
from telemetry.merkle import MerkleTree, leaf_hash
from telemetry.receipt import Checkpoint, SignedCheckpoint, verify_consistency_receipt, verify_inclusion_receipt
from telemetry.senml import records_from_cbor
from tests.vectors.generate import build, identity_of, record_json

VECTORS = Path(__file__).parent / "vectors"
NAMES = sorted(p.stem for p in VECTORS.glob("*.json"))
KINDS = ("envelope", "gap", "senml", "cose", "ack", "clock", "enrollment-request", "enrollment-response", "token",
         "log-entry", "checkpoint", "receipt", "bundle", "command", "site-request", "tpm-counter")


def vectors_of(*kinds: str) -> list[str]:
    return [n for n in NAMES if json.loads((VECTORS / f"{n}.json").read_text())["kind"] in kinds]


def test_the_vector_set_is_complete():
    assert set(NAMES) == set(build())
    assert {json.loads((VECTORS / f"{n}.json").read_text())["kind"] for n in NAMES} >= set(KINDS)


@pytest.mark.parametrize("name", NAMES)
def test_the_generator_reproduces_the_committed_bytes(name):
    description, raw = build()[name]
    assert (VECTORS / f"{name}.cbor").read_bytes() == raw, "encoding changed: if intended, regenerate and update the firmware"
    assert json.loads((VECTORS / f"{name}.json").read_text()) == json.loads(json.dumps(description))


@pytest.mark.parametrize("name", [n for n in NAMES if json.loads((VECTORS / f"{n}.json").read_text())["kind"] in ("envelope", "gap")])
def test_every_envelope_vector_verifies_with_its_public_key(name):
    description = json.loads((VECTORS / f"{name}.json").read_text())
    identity = identity_of(description)
    assert identity.public_key.hex() == description["public_key_hex"]
    assert envelope_algorithm(description) == identity.algorithm
    verdict = verify((VECTORS / f"{name}.cbor").read_bytes(), {identity.kid: identity.device_key(description["device"])})
    assert verdict.ok, verdict.detail
    envelope = verdict.envelope
    assert (envelope.seq, envelope.boot, envelope.prev.hex()) == (description["seq"], description["boot"], description["prev_hex"])
    assert [record_json(r) for r in envelope.records] == description["records"]
    assert envelope.version == description.get("version", 1)
    if envelope.version >= 2:
        assert {"alarms": envelope.counters.alarms, "gaps": envelope.counters.gaps} == description["counters"]
        assert (envelope.token.hex() if envelope.token else None) == description.get("token_hex")
        assert (envelope.binding.hex() if envelope.binding else None) == description.get("binding_hex")
    else:
        assert envelope.counters is None and envelope.token is None and envelope.binding is None


@pytest.mark.parametrize("name", NAMES)
def test_every_vector_names_its_signer_and_kind(name):
    description = json.loads((VECTORS / f"{name}.json").read_text())
    identity = identity_of(description)
    assert identity.public_key.hex() == description["public_key_hex"]
    assert description["kind"] in KINDS


def envelope_algorithm(description: dict) -> int:
    """The alg an envelope vector's protected header names."""
    return cbor.decode(bytes.fromhex(description["protected_hex"]))[1]


def test_both_signature_algorithms_have_envelope_vectors_and_eddsa_ones_stay_eddsa():
    algorithms: dict[int, list[str]] = {}
    for name in vectors_of("envelope", "gap"):
        description = json.loads((VECTORS / f"{name}.json").read_text())
        algorithms.setdefault(envelope_algorithm(description), []).append(name)
        assert (description.get("alg") == "ES256") == (envelope_algorithm(description) == -7), name
    assert set(algorithms) == {-8, -7}
    assert all(n.startswith(("envelope-es256", "gap-es256")) for n in algorithms[-7])


@pytest.mark.parametrize("name", vectors_of("envelope", "gap"))
def test_an_envelope_vector_never_verifies_under_a_key_of_the_other_algorithm(name):
    description = json.loads((VECTORS / f"{name}.json").read_text())
    raw = (VECTORS / f"{name}.cbor").read_bytes()
    other = Identity(bytes(32)) if description.get("alg") == "ES256" else identity_of({"alg": "ES256", "seed_hex": "01" * 32})
    under_its_kid = {decode_envelope(raw).kid: other.device_key(description["device"])}
    assert verify(raw, under_its_kid).reason is Reason.BAD_SIGNATURE


def test_the_senml_vector_is_the_deterministic_pack_its_envelope_signs():
    description = json.loads((VECTORS / "senml-node-report.json").read_text())
    raw = (VECTORS / "senml-node-report.cbor").read_bytes()
    assert [record_json(r) for r in records_from_cbor(cbor.decode(raw))] == description["records"]
    envelope = decode_envelope((VECTORS / "envelope-node-report.cbor").read_bytes())
    assert cbor.encode(cbor.decode(envelope.payload)[5]) == raw


@pytest.mark.parametrize("name", vectors_of("ack"))
def test_the_ack_vector_decodes_to_its_lists_for_its_batch(name):
    description = json.loads((VECTORS / f"{name}.json").read_text())
    ack = Ack.decode((VECTORS / f"{name}.cbor").read_bytes(), description["batch_seqs"])
    assert list(ack.stored) == description["stored"] and list(ack.already) == description["already"]
    assert [[r.index, r.reason, r.text] for r in ack.refused] == description["refused"]
    assert ack.token.hex() == description["token_hex"]
    if "receipt" in description:  # a gateway's: it proves the envelope was logged, with the lender's key alone
        shown = description["receipt"]
        assert (ack.receipt.seq, ack.receipt.at) == (shown["seq"], shown["at_ms"])
        ack.receipt.verify(shown["device"], bytes.fromhex(shown["envelope_hex"]), bytes.fromhex(description["public_key_hex"]))
    if "checkpoint" in description:  # a node's: where its envelope is, and which checkpoint holds it
        shown = description["checkpoint"]
        assert (ack.checkpoint.index, ack.checkpoint.tree_size, ack.checkpoint.digest.hex()) == (
            shown["index"], shown["tree_size"], shown["digest_hex"])
    assert ack.encode() == (VECTORS / f"{name}.cbor").read_bytes()


@pytest.mark.parametrize("name", vectors_of("log-entry"))
def test_each_log_entry_vector_has_one_encoding_and_its_leaf(name):
    description = json.loads((VECTORS / f"{name}.json").read_text())
    raw = (VECTORS / f"{name}.cbor").read_bytes()
    entry = LogEntry.decode(raw)
    assert entry.encode() == raw and leaf_hash(raw).hex() == description["leaf_hex"]
    assert (entry.kind.name.lower(), entry.device, entry.at) == (
        description["entry_kind"], description["device"], description["at_ms"])
    if entry.kind is EntryKind.ENVELOPE:
        assert entry.body.hex() == description["envelope_hex"]


def test_the_checkpoint_vector_is_signed_by_the_lender_over_its_leaves():
    description = json.loads((VECTORS / "log-checkpoint.json").read_text())
    raw = (VECTORS / "log-checkpoint.cbor").read_bytes()
    signed = SignedCheckpoint.decode(raw, bytes.fromhex(description["public_key_hex"]))
    checkpoint = signed.checkpoint
    assert (checkpoint.tree_size, checkpoint.time_ms, checkpoint.heads_size) == (
        description["tree_size"], description["time_ms"], description["devices"])
    assert checkpoint.root == MerkleTree(bytes.fromhex(h) for h in description["leaves_hex"]).root()
    assert (checkpoint.root.hex(), checkpoint.heads_root.hex(), signed.digest.hex()) == (
        description["root_hex"], description["heads_root_hex"], description["digest_hex"])


@pytest.mark.parametrize("name", vectors_of("receipt"))
def test_each_receipt_vector_proves_what_it_says_with_the_lenders_key(name):
    description = json.loads((VECTORS / f"{name}.json").read_text())
    raw = (VECTORS / f"{name}.cbor").read_bytes()
    key = bytes.fromhex(description["public_key_hex"])
    checkpoint = SignedCheckpoint.decode((VECTORS / "log-checkpoint.cbor").read_bytes(), key).checkpoint
    if description["proof"] == "inclusion":
        proven, index = verify_inclusion_receipt(raw, bytes.fromhex(description["entry_hex"]), key)
        assert (index, proven.root) == (description["index"], checkpoint.root)
    else:
        old = Checkpoint(description["old_size"], bytes.fromhex(description["old_root_hex"]), 0, bytes(32), 0)
        assert verify_consistency_receipt(raw, old, key).root == checkpoint.root


def test_the_bundle_vector_verifies_with_the_lenders_key_alone():
    description = json.loads((VECTORS / "bundle-gateway.json").read_text())
    report = verify_bundle(description["document"], bytes.fromhex(description["public_key_hex"]))
    assert report.ok, [f.detail for f in report.failures]
    assert base64.b64decode(description["document"]["checkpoints"][-1]["cose_b64"]) == (
        VECTORS / "bundle-gateway.cbor").read_bytes()


@pytest.mark.parametrize("name", vectors_of("clock"))
def test_each_clock_vector_is_the_statement_it_describes(name):
    description = json.loads((VECTORS / f"{name}.json").read_text())
    statement = ClockStatement.from_cbor(cbor.decode((VECTORS / f"{name}.cbor").read_bytes()))
    assert (statement.synced, statement.source, statement.uptime_ms, statement.system) == (
        description["synced"], description["source"], description["uptime_ms"], description.get("system"))


def test_the_enrollment_request_vector_carries_both_signatures_over_its_body():
    description = json.loads((VECTORS / "enrollment-request.json").read_text())
    request = EnrollmentRequest.decode((VECTORS / "enrollment-request.cbor").read_bytes())
    assert request.payload.hex() == description["body_hex"] and request.digest.hex() == description["request_digest_hex"]
    assert request.body.public_key.hex() == description["public_key_hex"] and request.device_signature_valid()
    technician = Identity(bytes.fromhex(description["technician_seed_hex"]))
    assert request.technician_kid == technician.kid
    assert signer_verifies(technician.public_key, request.payload, request.technician_signature, REQUEST_AAD)
    assert (request.body.device, request.body.technician, request.body.binding.asset, request.body.created) == (
        description["device"], description["technician"], description["asset"], description["created"])


def test_the_enrollment_response_vector_verifies_with_the_lender_key_and_answers_the_request():
    description = json.loads((VECTORS / "enrollment-response.json").read_text())
    lender = Identity(bytes.fromhex(description["seed_hex"]))
    response = EnrollmentResponse.verify((VECTORS / "enrollment-response.cbor").read_bytes(), lender.public_key)
    request = json.loads((VECTORS / "enrollment-request.json").read_text())
    assert response.request_digest.hex() == description["request_digest_hex"] == request["request_digest_hex"]
    assert (response.device, response.registered_at, response.asset) == (
        description["device"], description["registered_at"], description["asset"])
    with pytest.raises(EnrollmentFormatError):
        EnrollmentResponse.verify((VECTORS / "enrollment-response.cbor").read_bytes(),
                                  Identity(bytes.fromhex(request["seed_hex"])).public_key)


def test_the_site_request_vector_is_signed_by_its_technician_and_names_its_asset_and_response_key():
    description = json.loads((VECTORS / "site-request.json").read_text())
    request, message = SiteRequest.parse((VECTORS / "site-request.cbor").read_bytes())
    assert (request.technician, request.asset, request.created, request.response_key.hex()) == (
        description["technician"], description["asset"], description["created"], description["response_key_hex"])
    assert SiteRequest.verify(message, bytes.fromhex(description["public_key_hex"]))
    assert not SiteRequest.verify(message, Identity.generate().public_key)


def test_the_token_vector_is_genuine_for_its_device_only_and_carries_the_lender_time():
    description = json.loads((VECTORS / "lender-token.json").read_text())
    token, key = (VECTORS / "lender-token.cbor").read_bytes(), bytes.fromhex(description["key_hex"])
    assert issue_token(key, description["device"], description["lender_time"]) == token
    assert token_time(token) == description["lender_time"] and token_genuine(key, description["device"], token)
    assert not token_genuine(key, "another-device", token) and not token_genuine(bytes(32), description["device"], token)


def test_the_v2_envelopes_carry_the_binding_of_their_key_to_the_lender_and_asset_of_the_enrollment_vectors():
    lender = bytes.fromhex(json.loads((VECTORS / "enrollment-response.json").read_text())["public_key_hex"])
    for name in ("envelope-v2-alarm", "envelope-v2-node"):
        description = json.loads((VECTORS / f"{name}.json").read_text())
        envelope = decode_envelope((VECTORS / f"{name}.cbor").read_bytes())
        assert envelope.binding == binding_of(lender, bytes.fromhex(description["public_key_hex"]), "loan-2026-117")


@pytest.mark.parametrize("name", vectors_of("command"))
def test_every_command_vector_verifies_with_the_lenders_key_alone(name):
    description = json.loads((VECTORS / f"{name}.json").read_text())
    raw = (VECTORS / f"{name}.cbor").read_bytes()
    command = Command.verify(raw, bytes.fromhex(description["public_key_hex"]))
    assert (command.device, command.seq, str(command.kind)) == (description["device"], description["seq"],
                                                                description["command_kind"])
    assert (command.issued, command.expires) == (description["issued"], description["expires"])
    assert command.payload().hex() == description["payload_hex"]
    assert command.digest.hex() == description["digest_hex"]
    assert accept(raw, bytes.fromhex(description["public_key_hex"]), description["device"], command.seq - 1,
                  command.issued) == command
