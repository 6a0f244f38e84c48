"""Enrollment request version 2 (issue 14): a TPM gateway's P-256 key with an ES256 device signature, beside version 1
(Ed25519, byte for byte as before), each with one encoding; what a lender must refuse; the lender desk enrolls it."""
from __future__ import annotations

import json
from pathlib import Path

import nacl.public
import pytest
from aiocoap.numbers import codes

from lender.enrollment.desk import EnrollmentDesk, installation_reports
from lender.enrollment.technicians import TechnicianRegistry
from lender.evidence.registry import KeyStorage
from lender.evidence.store import SQLiteStore
from telemetry import cbor, cose
from telemetry.enrollment import (
    REQUEST_AAD,
    AssetBinding,
    CheckResult,
    EnrollmentBody,
    InstallationReport,
    EnrollmentRequest,
    signer_verifies,
)
from telemetry.exc import EnrollmentFormatError
from telemetry.identity import Identity, P256Identity
from telemetry.numbers import ALG_EDDSA, ALG_ES256

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
TPM_KEY = P256Identity(bytes(range(1, 33)))
SOFTWARE_KEY = Identity(bytes(range(32)))
TECHNICIAN = Identity(bytes(range(100, 132)))


def body(key, **changes) -> EnrollmentBody:
    fields = dict(device="gw-tpm-9", kind="gateway", public_key=key.public_key, technician="tech-ana",
                  hardware={"tpm": "swtpm"}, binding=AssetBinding("asset-1", "Yard"), created=1_767_225_600,
                  nonce=bytes(16),
                  response_key=bytes(nacl.public.PrivateKey(bytes(range(7, 39))).public_key))
    return EnrollmentBody(**{**fields, **changes})


def test_the_version_2_vector_carries_the_tpm_key_an_es256_device_signature_and_the_technicians_eddsa_one():
    description = json.loads((VECTORS / "enrollment-request-v2-es256.json").read_text())
    request = EnrollmentRequest.decode((VECTORS / "enrollment-request-v2-es256.cbor").read_bytes())
    assert request.payload.hex() == description["body_hex"] and request.digest.hex() == description["request_digest_hex"]
    assert (request.body.version, request.body.algorithm) == (2, ALG_ES256) and len(request.body.public_key) == 65
    assert cbor.decode(request.payload)[0] == 2 and request.device_signature_valid()
    _, signers = cose.parse_sign_signers((VECTORS / "enrollment-request-v2-es256.cbor").read_bytes())
    assert [alg for _, _, alg in signers] == [ALG_ES256, ALG_EDDSA]
    technician = Identity(bytes.fromhex(description["technician_seed_hex"]))
    assert signer_verifies(technician.public_key, request.payload, request.technician_signature, REQUEST_AAD)
    # version 1 is unchanged: no key 0, an Ed25519 key, EdDSA signers only (cose.parse_sign still reads it)
    old = EnrollmentRequest.decode((VECTORS / "enrollment-request.cbor").read_bytes())
    assert old.body.version == 1 and 0 not in cbor.decode(old.payload)
    cose.parse_sign((VECTORS / "enrollment-request.cbor").read_bytes())
    with pytest.raises(Exception, match="algorithm EdDSA"):
        cose.parse_sign((VECTORS / "enrollment-request-v2-es256.cbor").read_bytes())  # a version 1 reader refuses


def raw_body(key, overrides: dict | None = None) -> bytes:
    data = {1: "gw-tpm-9", 2: "gateway", 3: key.public_key, 4: "tech-ana", 5: {}, 6: {"asset": "asset-1", "site": ""},
            7: 1_767_225_600, 8: bytes(16)}
    data.update(overrides or {})
    return cbor.encode({k: v for k, v in data.items() if v is not None})


@pytest.mark.parametrize("payload, why", [
    (raw_body(TPM_KEY), "must not carry a P-256 device key"),            # a P-256 key in a version 1 body
    (raw_body(SOFTWARE_KEY, {0: 2}), "must not carry an Ed25519"),     # version 2 claimed for an Ed25519 key
    (raw_body(TPM_KEY, {0: 1}), "version 1 is not one"),              # version 1 spelled out
    (raw_body(TPM_KEY, {0: 3}), "version 3 is not one"),              # a version this lender does not read
    (raw_body(TPM_KEY, {0: True}), "version True is not one"),
], ids=["p256-in-v1", "ed25519-in-v2", "explicit-v1", "v3", "bool"])
def test_a_body_whose_version_and_key_disagree_is_refused(payload, why):
    with pytest.raises(EnrollmentFormatError, match=why):
        EnrollmentBody.decode(payload)


def test_a_device_signer_header_naming_another_algorithm_and_an_es256_technician_are_refused():
    request = EnrollmentRequest.create(body(TPM_KEY), TPM_KEY.sign).countersign(TECHNICIAN)
    relabelled = cose.sign(request.payload, [(request.body.kid, request.device_signature, ALG_EDDSA),
                                             (TECHNICIAN.kid, request.technician_signature)])
    with pytest.raises(EnrollmentFormatError, match="names another algorithm"):
        EnrollmentRequest.decode(relabelled)
    other = P256Identity(bytes(range(40, 72)))
    as_es256 = cose.sign(request.payload, [(request.body.kid, request.device_signature, ALG_ES256),
                                           (other.kid, bytes(64), ALG_ES256)])
    with pytest.raises(EnrollmentFormatError, match="technician countersigns with an Ed25519 key"):
        EnrollmentRequest.decode(as_es256)
    # and a signature by another P-256 key over the same body does not verify as the device's
    forged = EnrollmentRequest(request.payload, other.sign(EnrollmentRequest.device_message(request.body)[1]))
    assert not forged.device_signature_valid()


def test_the_lender_desk_enrolls_a_version_2_request_as_an_es256_device_with_a_software_label_until_attested(tmp_path):
    data = tmp_path / "lender"
    store = SQLiteStore.open(data)
    try:
        TechnicianRegistry(data).add("tech-ana", TECHNICIAN.public_key, "Ana")
        desk = EnrollmentDesk(data, store)
        desk.site_path("asset-1").parent.mkdir(parents=True, exist_ok=True)
        desk.site_path("asset-1").write_text('[asset]\nid = "asset-1"\n')
        import time
        request = EnrollmentRequest.create(body(TPM_KEY, created=int(time.time())), TPM_KEY.sign).countersign(TECHNICIAN)
        decision = desk.enroll(request.encode())
        assert decision.code == codes.CREATED, decision.text
        device = store.device("gw-tpm-9")
        assert device.public_key == TPM_KEY.public_key
        assert (device.algorithm, device.key_storage) == ("ES256", KeyStorage.SOFTWARE)
        assert desk.enroll(request.encode()).payload == decision.payload  # the same request: the same answer
        # its installation report (provision check) is signed ES256 by the same TPM key, and stored
        report = InstallationReport("gw-tpm-9", "tech-ana", int(time.time()), (CheckResult("time", True, "ok"),))
        stored = desk.report(report.sign(TPM_KEY, TPM_KEY.kid, TECHNICIAN))
        assert stored.code == codes.CREATED, stored.text
        assert [r.passed for _, r in installation_reports(data, "gw-tpm-9")] == [True]
        forged = report.sign(P256Identity(bytes(range(50, 82))).sign, TPM_KEY.kid, TECHNICIAN, ALG_ES256)
        assert desk.report(forged).code == codes.UNAUTHORIZED
    finally:
        store.close()
