"""Every shared wire-format vector in tests/vectors is rebuilt by the node byte for byte: CBOR, SenML, COSE and signatures."""

import json
import os

import cbor
import ed25519
import envelope
import senml
from ack import parse_ack
from check import equal, tohex, unhex

VECTORS = __file__[: __file__.rfind("/")] + "/../../tests/vectors"

# cose-wg/Examples eddsa-examples/eddsa-sig-01.json, the "output" COSE_Sign1.
EDDSA_SIG_01 = (
    "D28445A201270300A10442313154546869732069732074686520636F6E74656E742E5840"
    "7142FD2FF96D56DB85BEE905A76BA1D0B7321A95C8C4D3607C5781932B7AFB87"
    "11497DFA751BF40B58B3BCC32300B1487F3DB34085EEF013BF08F4A44D6FEF0D"
)


def _vectors():
    names = sorted(name[:-5] for name in os.listdir(VECTORS) if name.endswith(".json"))
    assert names, "no vectors found in " + VECTORS
    for name in names:
        with open("%s/%s.json" % (VECTORS, name)) as file:
            description = json.load(file)
        with open("%s/%s.cbor" % (VECTORS, name), "rb") as file:
            raw = file.read()
        yield name, description, raw


def _records(description):
    records = []
    for item in description["records"]:
        record = dict(item)
        if "data_hex" in record:
            record["data"] = unhex(record.pop("data_hex"))
        records.append(record)
    return records


def _check_envelope(name, description, raw):
    key = ed25519.SigningKey(unhex(description["seed_hex"]))
    equal(tohex(key.public_key), description["public_key_hex"], name + " public key")
    equal(tohex(envelope.kid_of(key.public_key)), description["kid_hex"], name + " kid")
    records = _records(description)
    version = description.get("version")
    compact = version == envelope.NODE_VERSION  # version 3: the readings as the node readings map, not SenML
    body = {
        envelope.DEVICE: description["device"],
        envelope.BOOT: description["boot"],
        envelope.SEQ: description["seq"],
        envelope.PREV: unhex(description["prev_hex"]),
        envelope.PACK: envelope.readings(records) if compact else senml.pack(records),
    }
    if "gap" in description:
        body[envelope.GAP] = envelope.gap_map(description["gap"])
    counters = description.get("counters")
    token = unhex(description["token_hex"]) if "token_hex" in description else None
    binding = unhex(description["binding_hex"]) if "binding_hex" in description else None
    if counters is not None:
        assert version in (envelope.CURRENT_VERSION, envelope.NODE_VERSION), name + " version %r" % version
        body[envelope.VERSION] = version
        body[envelope.COUNTERS] = ([counters["alarms"], counters["gaps"]] if compact else
                                   {envelope.COUNT_ALARMS: counters["alarms"], envelope.COUNT_GAPS: counters["gaps"]})
        if token is not None:
            body[envelope.TOKEN] = token
        if binding is not None:
            body[envelope.BINDING] = binding
    else:
        assert token is None and binding is None and "version" not in description, name + ": v2 fields without counters"
    payload = cbor.encode(body)
    equal(tohex(payload), description["payload_hex"], name + " payload")
    sealed = envelope.seal(
        key,
        description["device"],
        description["boot"],
        description["seq"],
        unhex(description["prev_hex"]),
        records,
        gap=description.get("gap"),
        counters=counters,
        token=token,
        binding=binding,
        compact=compact,
    )
    equal(sealed, raw, name + " envelope bytes")
    equal(tohex(envelope.digest(sealed)), description["digest_hex"], name + " chain digest")
    assert ed25519.verify(key.public_key, envelope.sig_structure(unhex(description["protected_hex"]), payload), sealed[-64:])


def _check_cose(name, description, raw):
    key = ed25519.SigningKey(unhex(description["seed_hex"]))
    protected = {int(label): value for label, value in description["protected"].items()}
    unprotected = {int(label): unhex(value) for label, value in description["unprotected"].items()}
    message = envelope.cose_sign1(key, protected, unprotected, description["payload_text"].encode())
    equal(tohex(message), tohex(raw), name)


def _check_ack(name, description, raw):
    ack = parse_ack(raw)
    equal(list(ack.stored), description["stored"], name + " stored")
    equal(list(ack.already), description["already"], name + " already")
    equal([list(r) for r in ack.refused], description["refused"], name + " refused")
    token = description.get("token_hex")
    equal(None if ack.token is None else tohex(ack.token), token, name + " token")
    # key 7 (issue 15): one signed command for a node, kept as its exact bytes (commands_vectors verifies and applies it)
    equal(None if ack.command is None else tohex(ack.command), description.get("command_hex"), name + " command")


def _check_token(name, description, raw):
    # The node never makes a lender token (it has no key): it keeps the newest one an ack brings and echoes it.
    # So: the shape it accepts (12 bytes), the lender time in the first 4 (big-endian), and an ack carrying it parses.
    equal(len(raw), envelope.TOKEN_BYTES, name + " length")
    equal(int.from_bytes(raw[:4], "big"), description["lender_time"], name + " lender time")
    ack = parse_ack(cbor.encode({1: [1], 2: [], 3: [], 4: raw}))
    equal(ack.token, raw, name + " in an ack")


def _check_enrollment_signature(name, description, raw):
    # A node signs the request body the technician's tool hands it (provisioning.node): its signature
    # over the COSE_Sign Sig_structure must be the one in the vector.
    request = cbor.decode(raw)
    payload, signer = request.value[2], request.value[3][0]
    key = ed25519.SigningKey(unhex(description["seed_hex"]))
    message = cbor.encode(["Signature", b"", signer[0], b"pledgewatch-enroll-request/1", payload])
    equal(tohex(key.sign(message)), tohex(signer[2]), name + " device signature")


# The node signs EdDSA only. An ES256 envelope (COSE alg -7) is a TPM gateway's: the node never makes or
# checks one, so it reads the alg its protected header names and leaves it out, counted, never by failing
# to verify it (the CBOR of every envelope, ES256 included, is still round-tripped below).
ALG_EDDSA = -8


def _header_alg(raw):
    return cbor.decode(cbor.decode(raw).value[0])[1]


def test_every_shared_vector_is_rebuilt_byte_for_byte_by_the_node():
    checked = {}
    for name, description, raw in _vectors():
        kind = description["kind"]
        if kind in ("envelope", "gap") and _header_alg(raw) != ALG_EDDSA:
            equal(description.get("alg"), "ES256", name + " alg")
            kind = "not the node's: ES256"
        elif kind in ("envelope", "gap"):
            _check_envelope(name, description, raw)
            if "counters" in description:
                kind += " v%d" % description["version"]
        elif kind == "senml":
            pack = senml.pack(_records(description))
            equal(tohex(cbor.encode(pack)), tohex(raw), name)
        elif kind == "cose":
            _check_cose(name, description, raw)
        elif kind == "ack":
            _check_ack(name, description, raw)
        elif kind == "enrollment-request" and description.get("alg") == "ES256":
            kind = "not the node's: ES256"  # a TPM gateway's version 2 request: a node signs EdDSA only
        elif kind == "enrollment-request":
            _check_enrollment_signature(name, description, raw)
        elif kind == "token":
            _check_token(name, description, raw)
        elif kind in ("clock", "enrollment-response", "command", "site-request"):
            equal(tohex(cbor.encode(cbor.decode(raw))), tohex(raw), name)  # not spoken by a node (yet): CBOR round trip
        elif kind == "tpm-counter":
            # a TPM gateway's counter statement (telemetry.tpmcount): a node has no TPM; CBOR round trip only
            equal(tohex(cbor.encode(cbor.decode(raw))), tohex(raw), name)
            kind = "not the node's: TPM"
        elif kind in ("log-entry", "checkpoint", "receipt", "bundle"):
            pass  # the lender's log: a node keeps only the checkpoint reference its ack carries (key 6)
        else:
            raise AssertionError("vector %s has kind %r, which the firmware tests do not know yet" % (name, kind))
        checked[kind] = checked.get(kind, 0) + 1
    for kind in ("envelope", "gap", "envelope v2", "gap v2", "envelope v3", "gap v3", "senml", "cose", "ack", "enrollment-request", "token",
                 "not the node's: ES256"):
        assert checked.get(kind), "no %s vector was checked: %r" % (kind, checked)


def test_every_shared_envelope_vector_decodes_and_reencodes_to_the_same_bytes():
    for name, description, raw in _vectors():
        if description["kind"] not in ("envelope", "gap"):
            continue  # a senml vector has no inner bstr; the COSE example's payload is text
        decoded = cbor.decode(raw)
        equal(cbor.encode(decoded), raw, name)
        for part in (decoded.value[0], decoded.value[2]):
            equal(cbor.encode(cbor.decode(part)), part, name + " inner bstr .cbor")


def test_the_node_reproduces_the_cose_working_group_eddsa_sig_01_example():
    key = ed25519.SigningKey(unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    message = envelope.cose_sign1(key, {1: -8, 3: 0}, {4: b"11"}, b"This is the content.")
    equal(tohex(message).upper(), EDDSA_SIG_01)
