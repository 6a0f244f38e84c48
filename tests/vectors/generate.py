"""Builds the shared wire-format test vectors: `python tests/vectors/generate.py` rewrites them.

Each vector is NAME.cbor (the exact bytes) and NAME.json (seed_hex, public_key_hex,
kind, and the decoded fields; "alg": "ES256" when its signer is a P-256 key, whose
seed_hex is then the private scalar and public_key_hex the uncompressed point).
tests/test_vectors.py checks that this generator still reproduces the committed
files byte for byte, so an encoding change can never slip through unnoticed;
the firmware suite checks the same files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import nacl.public  # noqa: E402

from telemetry import cbor  # noqa: E402
from telemetry.ack import Ack, Reason, Refusal  # noqa: E402
from telemetry.bundle import BundleEntry, build_bundle  # noqa: E402
from telemetry.clock import ClockStatement  # noqa: E402
from telemetry.command import Command, Configure, Inspect, Outcome, Permit, RotateKey, outcome_records  # noqa: E402
from telemetry.cose import cose_sign1  # noqa: E402
from telemetry.enrollment import (  # noqa: E402
    AssetBinding,
    EnrollmentBody,
    EnrollmentRequest,
    EnrollmentResponse,
    Geofence,
    SiteRequest,
    binding_of,
)
from telemetry.envelope import GENESIS, Counters, Gap, seal  # noqa: E402
from telemetry.freshness import issue_token  # noqa: E402
from telemetry.identity import Identity, P256Identity  # noqa: E402
from telemetry.rotation import handover_records  # noqa: E402
from telemetry.logentry import (  # noqa: E402
    AlarmAckNote,
    DeviceHead,
    EnrollmentEvidence,
    EntryKind,
    LogEntry,
    Registration,
)
from telemetry.merkle import MerkleTree, leaf_hash  # noqa: E402
from telemetry.receipt import Checkpoint, CheckpointReference, DeliveryReceipt, SignedCheckpoint  # noqa: E402
from telemetry.senml import Record, pack_to_cbor  # noqa: E402

# RFC 8032 §7.1 TEST 1 and TEST 2 keys: test keys only, never a device's.
SEED_1 = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
SEED_2 = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
SEED_3 = bytes.fromhex("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7")  # RFC 8032 TEST 3: the lender
# RFC 6979 §A.2.5: the P-256 test key, standing in for a gateway's TPM key (ES256 signatures are deterministic here)
P256_SECRET = bytes.fromhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")
P256_SECRET_2 = bytes(range(1, 33))      # a TPM gateway's next key (a test key)
P256_AK_SECRET = bytes(range(33, 65))    # the attestation key of that TPM (a test key)
TOKEN_KEY = bytes(range(100, 132))     # a lender's token key (a test key)
RESPONSE_KEY_SEED = bytes(range(32))  # the X25519 key a device makes for one enrollment (a test key)
T0 = 1767225600  # 2026-01-01T00:00:00Z

def record_json(record: Record) -> dict:
    out = {"name": record.name}
    for key in ("value", "string", "boolean", "sum", "unit", "time", "update_time"):
        value = getattr(record, key)
        if value is not None:
            out[key] = value
    if record.data is not None:
        out["data_hex"] = record.data.hex()
    return out


def identity_of(description: dict) -> Identity | P256Identity:
    """The signer a vector's description names: an Ed25519 seed, or a P-256 secret when its "alg" is ES256."""
    secret = bytes.fromhex(description["seed_hex"])
    return P256Identity(secret) if description.get("alg") == "ES256" else Identity(secret)


def envelope_vector(identity: Identity | P256Identity, seed: bytes, kind: str, **fields) -> tuple[dict, bytes]:
    envelope = seal(identity, **fields)
    description = {
        "kind": kind,
        **({"alg": "ES256"} if isinstance(identity, P256Identity) else {}),
        "seed_hex": seed.hex(),
        "public_key_hex": identity.public_key.hex(),
        "kid_hex": identity.kid.hex(),
        "device": envelope.device,
        "boot": envelope.boot,
        "seq": envelope.seq,
        "prev_hex": envelope.prev.hex(),
        "records": [record_json(r) for r in envelope.records],
        "protected_hex": envelope.protected.hex(),
        "payload_hex": envelope.payload.hex(),
        "signature_hex": envelope.signature.hex(),
        "digest_hex": envelope.digest.hex(),
    }
    if envelope.gap is not None:
        gap = envelope.gap
        description["gap"] = {k: v for k, v in (("reason", gap.reason), ("first", gap.first), ("last", gap.last),
                                                ("count", gap.count), ("queued", gap.queued),
                                                ("alarms_dropped", gap.alarms_dropped)) if v is not None}
    if envelope.version != 1:
        description["version"] = envelope.version
        description["counters"] = {"alarms": envelope.counters.alarms, "gaps": envelope.counters.gaps}
        if envelope.token is not None:
            description["token_hex"] = envelope.token.hex()
        if envelope.binding is not None:
            description["binding_hex"] = envelope.binding.hex()
    return description, envelope.raw


def build() -> dict[str, tuple[dict, bytes]]:
    one, two = Identity(SEED_1), Identity(SEED_2)
    vectors: dict[str, tuple[dict, bytes]] = {}
    gateway = [
        Record("temp", value=21.5, unit="Cel", time=T0),
        Record("door", boolean=False, time=T0),
        Record("tamper", boolean=False, time=T0),
    ]
    first, first_raw = envelope_vector(one, SEED_1, "envelope", device="gw-test-1", boot=1, seq=1, prev=GENESIS, records=gateway)
    vectors["envelope-gateway-first"] = (first, first_raw)
    second_records = [Record("temp", value=21.25, unit="Cel", time=T0 + 60), Record("run", sum=3600, unit="s", time=T0 + 60)]
    vectors["envelope-gateway-second"] = envelope_vector(
        one, SEED_1, "envelope", device="gw-test-1", boot=1, seq=2, prev=bytes.fromhex(first["digest_hex"]), records=second_records
    )
    node_records = [
        Record("temp", value=4.5, unit="Cel", time=T0 + 3600),
        Record("tamper", boolean=False, time=T0 + 3600),
        Record("batt", value=3.6, unit="V", time=T0 + 3600),
    ]
    vectors["envelope-node-report"] = envelope_vector(
        two, SEED_2, "envelope", device="node-test-7", boot=3, seq=41, prev=bytes(range(16)), records=node_records,
    )
    vectors["envelope-value-types"] = envelope_vector(
        one, SEED_1, "envelope", device="gw-test-1", boot=70000, seq=4294967296, prev=bytes([0xFF] * 16),
        records=[
            Record("site/a/temp", value=-40, unit="Cel", time=T0 + 0.5),
            Record("site/a/weight", value=1234.5678, unit="kg", time=T0 + 1.5),
            Record("site/a/load", value=100000.0, unit="kg", time=T0 + 1.5),
            Record("site/a/label", string="pallet 7 \u00e9t\u00e9", time=T0 + 2),
            Record("site/a/raw", data=bytes([0, 1, 2, 254, 255]), time=T0 + 2),
            Record("site/a/hum", value=-0.0, unit="%RH", time=T0 + 2),
        ],
    )
    vectors["envelope-alarm"] = envelope_vector(
        one, SEED_1, "envelope", device="gw-test-1", boot=1, seq=3, prev=bytes(16),
        records=[Record("alarm.tamper", string="raised", time=T0 + 120), Record("alarm.tamper.severity", value=3, time=T0 + 120)],
    )
    vectors["gap-overflow"] = envelope_vector(
        one, SEED_1, "gap", device="gw-test-1", boot=2, seq=1000, prev=bytes(16),
        gap=Gap("overflow", first=10, last=209, count=200),
    )
    vectors["gap-power-loss"] = envelope_vector(
        two, SEED_2, "gap", device="node-test-7", boot=4, seq=42, prev=bytes(16), gap=Gap("power-loss"),
        records=[Record("uptime", value=0, unit="s", time=T0 + 7200)],
    )
    vectors["senml-node-report"] = (
        {
            "kind": "senml",
            "source": "the SenML pack (payload key 5) of envelope-node-report, which its signer signs",
            "seed_hex": SEED_2.hex(),
            "public_key_hex": two.public_key.hex(),
            "records": [record_json(r) for r in node_records],
        },
        cbor.encode(pack_to_cbor(node_records)),
    )
    cose = cose_sign1(one, {1: -8, 3: 0}, {4: b"11"}, b"This is the content.")
    vectors["cose-eddsa-sig-01"] = (
        {
            "kind": "cose",
            "source": "cose-wg/Examples eddsa-examples/eddsa-sig-01.json",
            "seed_hex": SEED_1.hex(),
            "public_key_hex": one.public_key.hex(),
            "protected": {"1": -8, "3": 0},
            "unprotected": {"4": "3131"},
            "payload_text": "This is the content.",
        },
        cose,
    )
    vectors.update(contract_vectors(one, two, Identity(SEED_3)))
    vectors.update(version2_vectors(one, two, Identity(SEED_3)))
    vectors.update(version3_vectors(two, Identity(SEED_3)))
    vectors.update(evidence_vectors(one, two, Identity(SEED_3)))
    vectors.update(command_vectors(Identity(SEED_3)))
    vectors.update(node_command_vectors(two, Identity(SEED_3)))
    vectors.update(rotation_vectors(one, two, Identity(SEED_3)))
    vectors.update(staff_vectors(Identity(SEED_3)))
    vectors.update(es256_vectors(P256Identity(P256_SECRET), Identity(SEED_3)))
    vectors.update(tpm_counter_vectors(P256Identity(P256_SECRET)))
    vectors.update(tpm_rotation_vectors(P256Identity(P256_SECRET), P256Identity(P256_SECRET_2),
                                        P256Identity(P256_AK_SECRET), Identity(SEED_3)))
    return vectors


def es256_vectors(gateway: P256Identity, lender: Identity) -> dict[str, tuple[dict, bytes]]:
    """Envelopes a TPM gateway signs: ES256 (-7) over the same payload as EdDSA's. Nodes never sign these."""
    binding = binding_of(lender.public_key, gateway.public_key, "loan-2026-117")
    token = issue_token(TOKEN_KEY, "gw-tpm-1", T0 + 100)
    records = [Record("temp", value=21.5, unit="Cel", time=T0), Record("door", boolean=False, time=T0)]
    first = envelope_vector(gateway, P256_SECRET, "envelope", device="gw-tpm-1", boot=1, seq=1, prev=GENESIS,
                            records=records, counters=Counters(alarms=0, gaps=0), binding=binding)
    return {
        "envelope-es256-first": first,
        "gap-es256-power-loss": envelope_vector(
            gateway, P256_SECRET, "gap", device="gw-tpm-1", boot=2, seq=2, prev=bytes.fromhex(first[0]["digest_hex"]),
            gap=Gap("power-loss"), records=[Record("uptime", value=0, unit="s", time=T0 + 7200)],
            counters=Counters(alarms=0, gaps=1), token=token, binding=binding),
        "enrollment-request-v2-es256": enrollment_v2_vector(gateway, Identity(SEED_2)),
    }


def tpm_counter_vectors(attestation_key: P256Identity) -> dict[str, tuple[dict, bytes]]:
    """A TPM counter statement (telemetry.tpmcount, version 1): the data of the `tpm.counter` record gw-tpm-1 puts
    in the first envelope of boot 3 (seq 41): counter NV 0x01500050 at 40, TPM2_NV_Certify by the attestation key
    (the RFC 6979 P-256 test key standing in for it: a real TPM's ECDSA is not deterministic)."""
    import hashlib
    import struct

    from telemetry import tpmcount
    device, boot, seq, prev, count = "gw-tpm-1", 3, 41, bytes(range(32)), 40
    nv_public = struct.pack(">IHIHH", 0x01500050, 0x000B, 0x22060014, 0, 8)  # COUNTER, AUTHWRITE/READ, OWNERREAD, ...
    name = struct.pack(">H", 0x000B) + hashlib.sha256(nv_public).digest()
    qualifying = tpmcount.qualifying_data(device, boot, seq, prev)
    attest, tpmt_signature = tpm_attest(attestation_key, tpmcount.ST_ATTEST_NV, qualifying, struct.pack(">H", len(name))
                                        + name + struct.pack(">H", 0) + struct.pack(">H", 8) + count.to_bytes(8, "big"))
    data = tpmcount.encode(nv_public, attest, tpmt_signature)
    return {"tpm-counter-v1": ({"kind": "tpm-counter", "alg": "ES256", "seed_hex": P256_SECRET.hex(),
                                "public_key_hex": attestation_key.public_key.hex(), "device": device, "boot": boot,
                                "seq": seq, "prev_hex": prev.hex(), "version": 1, "index": 0x01500050,
                                "count": count, "nv_public_hex": nv_public.hex(), "attest_hex": attest.hex(),
                                "signature_hex": tpmt_signature.hex(), "qualifying_data_hex": qualifying.hex()},
                               data)}


def enrollment_v2_vector(gateway: P256Identity, technician: Identity) -> tuple[dict, bytes]:
    """A version 2 enrollment request (body key 0: 2): a TPM gateway's P-256 key, its ES256 device signature
    (deterministic, RFC 6979, as the vector's P-256 stand-in signs), the technician's EdDSA countersignature."""
    body = EnrollmentBody(
        device="gw-tpm-1", kind="gateway", public_key=gateway.public_key, technician="tech-ana",
        hardware={"imei": "356938035643809", "iccid": "8944500102198304826", "tpm": "swtpm"},
        binding=AssetBinding("loan-2026-117", "Warehouse 3, Dock Road", Geofence(31.2304, 121.4737, 250.0)),
        created=T0, nonce=bytes(range(16, 32)),
        response_key=bytes(nacl.public.PrivateKey(RESPONSE_KEY_SEED).public_key),
    )
    request = EnrollmentRequest.create(body, gateway.sign).countersign(technician)
    return ({"kind": "enrollment-request", "alg": "ES256", "version": 2, "seed_hex": P256_SECRET.hex(),
             "public_key_hex": gateway.public_key.hex(), "technician_seed_hex": SEED_2.hex(),
             "technician_public_key_hex": technician.public_key.hex(), "device": body.device,
             "technician": body.technician, "asset": body.binding.asset, "created": body.created,
             "body_hex": request.payload.hex(), "request_digest_hex": request.digest.hex()},
            request.encode())


def staff_vectors(lender: Identity) -> dict[str, tuple[dict, bytes]]:
    """Log entries of what the lender's staff did (docs/evidence.md §2): an operator acknowledged the door alarm
    gw-test-1 raised in its envelope seq 17 (the envelope-v2-alarm vector). Kind 7, added with the console's acks;
    the signer named is the lender's, whose log it is (as the other log-entry vectors)."""
    ack = LogEntry(EntryKind.ALARM_ACK, "gw-test-1", (T0 + 1800) * 1000,
                   AlarmAckNote(17, "risk.officer", "called the borrower: a delivery, confirmed", "alarm.door.stock"))
    raw = ack.encode()
    signer = {"seed_hex": SEED_3.hex(), "public_key_hex": lender.public_key.hex()}
    return {"log-entry-alarm-ack": ({"kind": "log-entry", **signer, "entry_kind": "alarm_ack", "device": ack.device,
                                     "at_ms": ack.at, "seq": ack.body.seq, "by": ack.body.by, "note": ack.body.note,
                                     "alarm": ack.body.alarm, "leaf_hex": leaf_hash(raw).hex()}, raw)}


def command_vectors(lender: Identity) -> dict[str, tuple[dict, bytes]]:
    """The lender's signed commands (telemetry.command): an inspection, a permit and a configuration for gw-test-1."""
    signer = {"seed_hex": SEED_3.hex(), "public_key_hex": lender.public_key.hex()}
    commands = {
        "command-inspect": Command("gw-test-1", 1, T0 + 400, T0 + 700, Inspect(bytes(range(16)), ("loan-2026-117",))),
        "command-permit": Command("gw-test-1", 2, T0 + 500, T0 + 86_400, Permit(
            "loan-2026-117", T0 + 3600, T0 + 7200, "release of goods, contract C-2026-0042", ("door",))),
        "command-configure": Command("gw-test-1", 3, T0 + 600, T0 + 86_400, Configure(
            2, b'[rules]\nheartbeat_s = 900\n')),
    }
    vectors = {}
    for name, command in commands.items():
        signed = command.sign(lender)
        vectors[name] = ({"kind": "command", **signer, "device": command.device, "seq": command.seq,
                          "command_kind": str(command.kind), "issued": command.issued, "expires": command.expires,
                          "payload_hex": command.payload().hex(), "digest_hex": signed.digest.hex()}, signed.raw)
    return vectors


def node_command_vectors(node: Identity, lender: Identity) -> dict[str, tuple[dict, bytes]]:
    """A node's commands (issue 15): the lender's ack to node-test-7's report seq 124 carrying, under ack key 7, an
    inspection (command seq 1); and the node's answer at its next wake, envelope seq 125 with the readings and the
    command's outcome records (the nonce), version 2 because those records do not fit the node readings table."""
    asset = "loan-2026-117"
    node_binding = binding_of(lender.public_key, node.public_key, asset)
    inspect = Command("node-test-7", 1, T0 + 5400, T0 + 6000, Inspect(bytes(range(200, 216)), ())).sign(lender)
    token = issue_token(TOKEN_KEY, "node-test-7", T0 + 5410)
    ack = Ack(stored=(124,), token=token, checkpoint=CheckpointReference(7, 9, bytes(range(32))), command=inspect.raw)
    when = T0 + 5420
    readings = [Record("temp", value=4.5, unit="Cel", time=when), Record("tamper", boolean=False, time=when),
                Record("batt", value=3.599609375, unit="V", time=when)]
    answer = readings + outcome_records(inspect, Outcome.APPLIED, when)
    signer = {"seed_hex": SEED_3.hex(), "public_key_hex": lender.public_key.hex()}
    return {
        "ack-node-command": ({"kind": "ack", **signer, "batch_seqs": [124], "stored": [124], "already": [],
                              "refused": [], "token_hex": token.hex(),
                              "checkpoint": {"index": 7, "tree_size": 9, "digest_hex": bytes(range(32)).hex()},
                              "command_hex": inspect.raw.hex(),
                              "command": {"device": "node-test-7", "seq": 1, "command_kind": "inspect",
                                          "issued": inspect.issued, "expires": inspect.expires,
                                          "nonce_hex": bytes(range(200, 216)).hex(), "digest_hex": inspect.digest.hex()}},
                             ack.encode()),
        "envelope-node-inspect-answer": envelope_vector(
            node, SEED_2, "envelope", device="node-test-7", boot=6, seq=125, prev=bytes(range(32, 48)), records=answer,
            counters=Counters(alarms=1, gaps=2), token=token, binding=node_binding),
    }


def rotation_vectors(old: Identity, new: Identity, lender: Identity) -> dict[str, tuple[dict, bytes]]:
    """A key handover (telemetry.rotation, version 1): gw-test-1 answers the lender's rotate-key command 4 with an
    envelope its old key (SEED_1) signs, naming the new key (SEED_2) with that key's proof; the next envelope is the
    new key's and links to the handover."""
    command = Command("gw-test-1", 4, T0 + 700, T0 + 1300, RotateKey(bytes(range(32, 48)))).sign(lender)
    handover, handover_raw = envelope_vector(
        old, SEED_1, "envelope", device="gw-test-1", boot=1, seq=10, prev=bytes(range(16)),
        records=handover_records(command, old.kid, new, T0 + 710), counters=Counters(alarms=0, gaps=0))
    handover.update({"command_hex": command.raw.hex(), "command_digest_hex": command.digest.hex(),
                     "lender_public_key_hex": lender.public_key.hex(), "new_public_key_hex": new.public_key.hex()})
    after = envelope_vector(new, SEED_2, "envelope", device="gw-test-1", boot=1, seq=11,
                            prev=bytes.fromhex(handover["digest_hex"]),
                            records=[Record("temp", value=4.25, unit="Cel", time=T0 + 720)],
                            counters=Counters(alarms=0, gaps=0))
    return {"handover-v1": (handover, handover_raw), "handover-v1-next": after}


TPM_KEY_ATTRIBUTES = 0x00040072   # fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | sign


def tpm_key_public(point: bytes, attributes: int = TPM_KEY_ATTRIBUTES) -> bytes:
    """The TPM2B_PUBLIC a TPM gives of a P-256 ECDSA-SHA256 signing key (as durable.keystore makes them)."""
    import struct
    area = (struct.pack(">HHIH", 0x0023, 0x000B, attributes, 0) + struct.pack(">HHHHH", 0x0010, 0x0018, 0x000B,
                                                                             0x0003, 0x0010)
            + struct.pack(">H", 32) + point[1:33] + struct.pack(">H", 32) + point[33:])
    return struct.pack(">H", len(area)) + area


def tpm_certify(attestation_key: P256Identity, key_public: bytes, qualifying: bytes) -> tuple[bytes, bytes]:
    """(TPMS_ATTEST, TPMT_SIGNATURE) of TPM2_Certify of the key `key_public` (a TPM2B_PUBLIC) by `attestation_key`
    over `qualifying`, as a TPM makes them (its ECDSA is not deterministic; this stand-in's is, RFC 6979)."""
    import hashlib
    import struct

    from telemetry.rotation import ST_ATTEST_CERTIFY
    name = struct.pack(">H", 0x000B) + hashlib.sha256(key_public[2:]).digest()
    return tpm_attest(attestation_key, ST_ATTEST_CERTIFY, qualifying,
                      struct.pack(">H", len(name)) + name + struct.pack(">H", len(name)) + name)


def tpm_attest(attestation_key: P256Identity, kind: int, qualifying: bytes, attested: bytes) -> tuple[bytes, bytes]:
    """(TPMS_ATTEST, TPMT_SIGNATURE): a TPM-generated attestation of type `kind` over `qualifying`, its
    type-specific part `attested`, signed by `attestation_key` (telemetry.tpm reads them back)."""
    import struct

    from telemetry.tpm import ALG_ECDSA, ALG_SHA256, TPM_GENERATED
    signer_name = struct.pack(">H", ALG_SHA256) + bytes(range(64, 96))   # the AK's qualified name (not checked)
    attest = (struct.pack(">IH", TPM_GENERATED, kind) + struct.pack(">H", len(signer_name)) + signer_name
              + struct.pack(">H", len(qualifying)) + qualifying + struct.pack(">QIIB", 86_400_000, 12, 0, 1)
              + struct.pack(">Q", 0x2019102300163636) + attested)
    signature = attestation_key.sign(attest)
    return attest, (struct.pack(">HHH", ALG_ECDSA, ALG_SHA256, 32) + signature[:32] + struct.pack(">H", 32)
                    + signature[32:])


def tpm_rotation_vectors(old: P256Identity, new: P256Identity, attestation_key: P256Identity,
                         lender: Identity) -> dict[str, tuple[dict, bytes]]:
    """A TPM gateway's key handover (telemetry.rotation version 1 with its optional `key.next.certify`): gw-tpm-1
    answers rotate-key command 2 with an envelope its old TPM key signs (ES256), naming the new key, that key's
    proof and TPM2_Certify of the new key by the TPM's attestation key over `certify_data` of this handover."""
    from telemetry.rotation import certify_data, encode_certification
    command = Command("gw-tpm-1", 2, T0 + 700, T0 + 1300, RotateKey(bytes(range(48, 64)))).sign(lender)
    qualifying = certify_data(command.device, old.kid, new.public_key, command.digest)
    key_public = tpm_key_public(new.public_key)
    attest, signature = tpm_certify(attestation_key, key_public, qualifying)
    certification = encode_certification(key_public, attest, signature)
    handover, raw = envelope_vector(
        old, P256_SECRET, "envelope", device="gw-tpm-1", boot=3, seq=42, prev=bytes(range(16)),
        records=handover_records(command, old.kid, new, T0 + 710, certification),
        counters=Counters(alarms=0, gaps=0))
    handover.update({"command_hex": command.raw.hex(), "command_digest_hex": command.digest.hex(),
                     "lender_public_key_hex": lender.public_key.hex(), "new_public_key_hex": new.public_key.hex(),
                     "attestation_key_hex": attestation_key.public_key.hex(), "certify_data_hex": qualifying.hex(),
                     "certify_key_public_hex": key_public.hex(), "certify_attest_hex": attest.hex(),
                     "certify_signature_hex": signature.hex()})
    return {"envelope-es256-handover-certified": (handover, raw)}


def version2_vectors(gateway: Identity, node: Identity, lender: Identity) -> dict[str, tuple[dict, bytes]]:
    """Version 2 envelopes (counters, lender token, enrollment binding) and a lender token."""
    binding = binding_of(lender.public_key, gateway.public_key, "loan-2026-117")
    node_binding = binding_of(lender.public_key, node.public_key, "loan-2026-117")
    token = issue_token(TOKEN_KEY, "gw-test-1", T0 + 100)
    alarm_records = [
        Record("alarm.door.stock", string="raised", time=T0 + 130),
        Record("alarm.door.stock.severity", string="major", time=T0 + 130),
        Record("alarm.door.stock.sensors", string="door", time=T0 + 130),
    ]
    node_token = issue_token(TOKEN_KEY, "node-test-7", T0 + 3000)
    node_records = [Record("temp", value=4.5, unit="Cel", time=T0 + 3600), Record("batt", value=3.6, unit="V", time=T0 + 3600)]
    return {
        "envelope-v2-alarm": envelope_vector(
            gateway, SEED_1, "envelope", device="gw-test-1", boot=2, seq=17, prev=bytes(range(16, 32)),
            records=alarm_records, counters=Counters(alarms=3, gaps=1), token=token, binding=binding),
        "envelope-v2-node": envelope_vector(
            node, SEED_2, "envelope", device="node-test-7", boot=5, seq=120, prev=bytes(range(16)),
            records=node_records, counters=Counters(alarms=0, gaps=1), token=node_token, binding=node_binding),
        "gap-overflow-v2": envelope_vector(
            gateway, SEED_1, "gap", device="gw-test-1", boot=2, seq=18, prev=bytes(16),
            gap=Gap("overflow", first=5, last=9, count=5, queued=100000, alarms_dropped=0),
            counters=Counters(alarms=3, gaps=2), token=token),
        "lender-token": ({"kind": "token", "seed_hex": SEED_1.hex(), "public_key_hex": gateway.public_key.hex(),
                          "key_hex": TOKEN_KEY.hex(), "device": "gw-test-1", "lender_time": T0 + 100}, token),
    }


def version3_vectors(node: Identity, lender: Identity) -> dict[str, tuple[dict, bytes]]:
    """Version 3, a node's compact envelope: version 2 with the readings as a telemetry.nodereadings map."""
    node_binding = binding_of(lender.public_key, node.public_key, "loan-2026-117")
    node_token = issue_token(TOKEN_KEY, "node-test-7", T0 + 3000)
    when = T0 + 3600
    typical = [Record("temp", value=4.5, unit="Cel", time=when), Record("tamper", boolean=False, time=when),
               Record("batt", value=3.599609375, unit="V", time=when)]
    every = [Record("temp", value=-12.25, unit="Cel", time=when + 900), Record("alarm.tamper", boolean=True, time=when + 900),
             Record("batt", value=3.3, unit="V", time=when + 900), Record("alarm.motion", boolean=True, time=when + 900),
             Record("alarm.tilt", value=37.5, unit="deg", time=when + 900),
             Record("device.heartbeat_s", value=900, unit="s", time=when + 900)]
    return {
        "envelope-v3-node": envelope_vector(
            node, SEED_2, "envelope", device="node-test-7", boot=5, seq=121, prev=bytes(range(16)), records=typical,
            counters=Counters(alarms=0, gaps=1), token=node_token, binding=node_binding, compact=True),
        "envelope-v3-node-alarm": envelope_vector(
            node, SEED_2, "envelope", device="node-test-7", boot=6, seq=122, prev=bytes(range(16, 32)), records=every,
            counters=Counters(alarms=1, gaps=1), token=node_token, binding=node_binding, compact=True),
        "gap-refused-v3": envelope_vector(
            node, SEED_2, "gap", device="node-test-7", boot=6, seq=123, prev=bytes(16),
            gap=Gap("refused", first=117, last=117, count=1), counters=Counters(alarms=1, gaps=2), compact=True),
    }


def evidence_vectors(gateway: Identity, node: Identity, lender: Identity) -> dict[str, tuple[dict, bytes]]:
    """The lender's log (docs/evidence.md): entries, a signed checkpoint, receipts, the acks that carry them, a bundle.

    A small log: gw-test-1 enrolled (the enrollment-request and -response
    vectors, countersigned by the technician whose key is SEED_2), node-test-7
    registered by hand, three version 2 envelopes of gw-test-1 and one of the
    node, interleaved as they arrived.
    """
    asset = "loan-2026-117"
    technician = node  # the enrollment-request vector's technician signs with SEED_2
    request_vector = contract_vectors(gateway, technician, lender)
    request, response = request_vector["enrollment-request"][1], request_vector["enrollment-response"][1]
    binding = binding_of(lender.public_key, gateway.public_key, asset)
    token = issue_token(TOKEN_KEY, "gw-test-1", T0 + 70)
    prev, envelopes = GENESIS, []
    for seq in (1, 2, 3):
        envelope = seal(gateway, device="gw-test-1", boot=1, seq=seq, prev=prev,
                        records=[Record("temp", value=4.0 + seq / 2, unit="Cel", time=T0 + 100 * seq)],
                        counters=Counters(alarms=0, gaps=0), token=token, binding=binding)
        prev = envelope.digest
        envelopes.append(envelope)
    node_envelope = seal(node, device="node-test-7", boot=1, seq=1, prev=GENESIS,
                         records=[Record("temp", value=3.5, unit="Cel", time=T0 + 150)], counters=Counters(0, 0))
    ms = 1000
    entries = [
        LogEntry(EntryKind.REGISTRATION, "gw-test-1", (T0 + 60) * ms, Registration(
            gateway.public_key, asset, binding, EnrollmentEvidence(request, response, technician.public_key))),
        LogEntry(EntryKind.REGISTRATION, "node-test-7", (T0 + 90) * ms, Registration(node.public_key, asset)),
        LogEntry(EntryKind.ENVELOPE, "gw-test-1", (T0 + 101) * ms, envelopes[0].raw),
        LogEntry(EntryKind.ENVELOPE, "gw-test-1", (T0 + 201) * ms, envelopes[1].raw),
        LogEntry(EntryKind.ENVELOPE, "node-test-7", (T0 + 202) * ms, node_envelope.raw),
        LogEntry(EntryKind.ENVELOPE, "gw-test-1", (T0 + 301) * ms, envelopes[2].raw),
    ]
    raws = [e.encode() for e in entries]
    tree = MerkleTree(leaf_hash(raw) for raw in raws)
    heads = {"gw-test-1": DeviceHead("gw-test-1", 4, 5, 3), "node-test-7": DeviceHead("node-test-7", 2, 4, 1)}
    heads_tree = MerkleTree(h.leaf for h in heads.values())
    first = SignedCheckpoint.sign(Checkpoint(1, tree.root(1), (T0 + 60) * ms, MerkleTree(
        [DeviceHead("gw-test-1", 1, 0, None).leaf]).root(), 1), lender)
    latest = SignedCheckpoint.sign(Checkpoint(6, tree.root(), (T0 + 302) * ms, heads_tree.root(), 2), lender)
    mine = [0, 2, 3, 5]
    document = build_bundle("gw-test-1", lender.public_key, [first, latest], [tree.consistency_path(1)],
                            [BundleEntry(i, tree.leaf(i), raws[i]) for i in mine], tree.multi_proof(mine),
                            heads["gw-test-1"], 0, heads_tree.inclusion_path(0))
    signer = {"seed_hex": SEED_3.hex(), "public_key_hex": lender.public_key.hex()}
    receipt = latest.inclusion_receipt(5, tree.inclusion_path(5))
    ack = Ack(stored=(3,), token=issue_token(TOKEN_KEY, "gw-test-1", T0 + 302),
              receipt=DeliveryReceipt(3, (T0 + 301) * ms, receipt))
    node_ack = Ack(stored=(1,), token=issue_token(TOKEN_KEY, "node-test-7", T0 + 202),
                   checkpoint=CheckpointReference(4, 6, latest.digest))
    return {
        "log-entry-envelope": ({"kind": "log-entry", **signer, "entry_kind": "envelope", "device": "gw-test-1",
                                "at_ms": entries[2].at, "envelope_hex": envelopes[0].raw.hex(),
                                "leaf_hex": tree.leaf(2).hex()}, raws[2]),
        "log-entry-registration": ({"kind": "log-entry", **signer, "entry_kind": "registration",
                                    "device": "gw-test-1", "at_ms": entries[0].at, "asset": asset,
                                    "binding_hex": binding.hex(), "technician_public_key_hex": technician.public_key.hex(),
                                    "leaf_hex": tree.leaf(0).hex()}, raws[0]),
        "log-checkpoint": ({"kind": "checkpoint", **signer, "tree_size": 6, "root_hex": tree.root().hex(),
                            "time_ms": latest.checkpoint.time_ms, "heads_root_hex": heads_tree.root().hex(),
                            "devices": 2, "leaves_hex": [tree.leaf(i).hex() for i in range(6)],
                            "digest_hex": latest.digest.hex()}, latest.encode()),
        "log-receipt-inclusion": ({"kind": "receipt", **signer, "proof": "inclusion", "index": 5, "tree_size": 6,
                                   "entry_hex": raws[5].hex(), "path_hex": [h.hex() for h in tree.inclusion_path(5)]},
                                  receipt),
        "log-receipt-consistency": ({"kind": "receipt", **signer, "proof": "consistency", "old_size": 1,
                                     "old_root_hex": tree.root(1).hex(), "tree_size": 6,
                                     "path_hex": [h.hex() for h in tree.consistency_path(1)]},
                                    latest.consistency_receipt(1, tree.consistency_path(1))),
        "ack-receipt": ({"kind": "ack", **signer, "batch_seqs": [3], "stored": [3], "already": [], "refused": [],
                         "token_hex": ack.token.hex(), "receipt": {"seq": 3, "at_ms": (T0 + 301) * ms,
                                                                   "envelope_hex": envelopes[2].raw.hex(),
                                                                   "device": "gw-test-1"}}, ack.encode()),
        "ack-node-checkpoint": ({"kind": "ack", **signer, "batch_seqs": [1], "stored": [1], "already": [],
                                 "refused": [], "token_hex": node_ack.token.hex(),
                                 "checkpoint": {"index": 4, "tree_size": 6, "digest_hex": latest.digest.hex()}},
                                node_ack.encode()),
        "bundle-gateway": ({"kind": "bundle", **signer, "device": "gw-test-1",
                            "note": "the .cbor file is the checkpoint the bundle's entries are proven against",
                            "document": document}, latest.encode()),
    }


def contract_vectors(device: Identity, technician: Identity, lender: Identity) -> dict[str, tuple[dict, bytes]]:
    """The messages besides envelopes: the ack, the clock statement, an enrollment request and its response."""
    batch = [1, 2, 3, 4, 9]
    ack = Ack(stored=(1, 2, 3), already=(4,), refused=(Refusal(4, Reason.CHAIN, "chain: seq 9 does not link to seq 8"),),
              token=issue_token(TOKEN_KEY, "gw-test-1", T0 + 200))
    clocks = {
        "clock-synced": ClockStatement(True, "ntp", 86_400_000),
        "clock-unsynced": ClockStatement(False, "none", 12_345, T0),
    }
    body = EnrollmentBody(
        device="gw-test-1", kind="gateway", public_key=device.public_key, technician="tech-ana",
        hardware={"imei": "356938035643809", "iccid": "8944500102198304826"},
        binding=AssetBinding("loan-2026-117", "Warehouse 3, Dock Road", Geofence(31.2304, 121.4737, 250.0)),
        created=T0, nonce=bytes(range(16)),
        response_key=bytes(nacl.public.PrivateKey(RESPONSE_KEY_SEED).public_key),
    )
    request = EnrollmentRequest.create(body, device.sign).countersign(technician)
    response = EnrollmentResponse(body.device, request.digest, T0 + 60, body.binding.asset)
    site_request = SiteRequest("tech-ana", body.binding.asset, T0 + 30,
                               bytes(nacl.public.PrivateKey(RESPONSE_KEY_SEED).public_key))
    signers = {"seed_hex": SEED_1.hex(),
               "public_key_hex": device.public_key.hex()}
    vectors = {
        "ack-batch": ({"kind": "ack", **signers, "batch_seqs": batch, "stored": list(ack.stored),
                       "already": list(ack.already), "refused": [[r.index, int(r.reason), r.text] for r in ack.refused],
                       "token_hex": ack.token.hex()},
                      ack.encode()),
        "enrollment-request": ({"kind": "enrollment-request", **signers,
                                "technician_seed_hex": SEED_2.hex(), "technician_public_key_hex": technician.public_key.hex(),
                                "device": body.device, "technician": body.technician, "asset": body.binding.asset,
                                "created": body.created, "body_hex": request.payload.hex(),
                                "request_digest_hex": request.digest.hex()},
                               request.encode()),
        "enrollment-response": ({"kind": "enrollment-response", "seed_hex": SEED_3.hex(),
                                 "public_key_hex": lender.public_key.hex(), "device": response.device,
                                 "request_digest_hex": response.request_digest.hex(),
                                 "registered_at": response.registered_at, "asset": response.asset,
                                 "note": "without a sealed context: crypto_box_seal is randomized, so no vector can pin it"},
                                response.sign(lender)),
        "site-request": ({"kind": "site-request", "seed_hex": SEED_2.hex(), "public_key_hex": technician.public_key.hex(),
                          "technician": site_request.technician, "asset": site_request.asset,
                          "created": site_request.created, "response_key_hex": site_request.response_key.hex(),
                          "note": "the answer is the site file (COSE_Sign1, pledgewatch-site/1) sealed to the "
                                  "response key: crypto_box_seal is randomized, so no vector can pin it"},
                         site_request.sign(technician)),
    }
    for name, statement in clocks.items():
        vectors[name] = ({"kind": "clock", **signers, **{k: v for k, v in (
            ("synced", statement.synced), ("source", statement.source), ("uptime_ms", statement.uptime_ms),
            ("system", statement.system)) if v is not None}}, cbor.encode(statement.to_cbor()))
    return vectors


def main() -> None:
    for name, (description, raw) in build().items():
        (HERE / f"{name}.json").write_text(json.dumps(description, indent=2, ensure_ascii=False) + "\n")
        (HERE / f"{name}.cbor").write_bytes(raw)
        print(f"{name}: {len(raw)} bytes")


if __name__ == "__main__":
    main()
