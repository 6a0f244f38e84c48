"""The lender's check that an enrolling device's key lives in a TPM (issue 14), and the credential that proves it.

A version 2 enrollment request may carry a `TpmAttestation` (telemetry.enrollment). The lender accepts it when:

1. the endorsement key's certificate chains to a certificate in the lender's list of TPM manufacturer CAs
   (``DATA/enroll/tpm-manufacturers/*.pem``; a maker's root and its intermediate CAs), each certificate in its
   validity period and issued by the next (signature checked);
2. the attestation key is a restricted ECDSA P-256 signing key, fixedTPM, fixedParent, sensitiveDataOrigin;
3. its signature over the TPMS_ATTEST verifies, and the TPMS_ATTEST is a TPM_GENERATED certification
   (TPM_ST_ATTEST_CERTIFY) over this request's `certify_data` of the key named by the device key's public area;
4. that public area is the body's P-256 key, with fixedTPM, fixedParent and sensitiveDataOrigin (made inside
   the TPM, never to leave it), a signing key.

(1)-(4) cannot show that the attestation key is in the same chip as the endorsement key: anyone can copy a
real EK certificate. So the answer carries TPM2_MakeCredential for that EK and the attestation key's name, and
the device's OSCORE context is encrypted under the credential's secret: only the chip that holds both keys
recovers it (TPM2_ActivateCredential), and every envelope of the device arrives under that context. The lender
labels the device `tpm-attested` on that basis.

tpm2-pytss (the `tpm` extra) is needed here only when a request carries an attestation.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from lender.enrollment.technicians import enroll_dir
from telemetry.enrollment import EnrollmentBody, certify_data

MANUFACTURERS_DIR = "tpm-manufacturers"
MAX_CHAIN = 5
TPM_GENERATED = 0xFF544347


class AttestationError(ValueError):
    """Why an attestation does not prove what it claims (one line, for the refusal)."""


@dataclass(frozen=True, slots=True)
class Credential:
    """What the answer carries (marshalled TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET) and the secret it wraps."""

    id_object: bytes
    encrypted_secret: bytes
    secret: bytes


def manufacturers_dir(data_dir: str | os.PathLike) -> Path:
    return enroll_dir(data_dir) / MANUFACTURERS_DIR


def manufacturer_cas(data_dir: str | os.PathLike) -> list[x509.Certificate]:
    """The TPM manufacturer CA certificates the lender trusts (PEM files, any number of certificates each)."""
    found = []
    folder = manufacturers_dir(data_dir)
    for path in sorted(folder.glob("*.pem")) if folder.is_dir() else ():
        found += x509.load_pem_x509_certificates(path.read_bytes())
    return found


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _within(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def check_chain(ek_der: bytes, cas: list[x509.Certificate], now: dt.datetime | None = None) -> x509.Certificate:
    """The EK certificate, if it chains to a configured CA; AttestationError otherwise."""
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        cert = x509.load_der_x509_certificate(ek_der)
    except ValueError as exc:
        raise AttestationError(f"the EK certificate is not DER X.509: {exc}") from exc
    if not cas:
        raise AttestationError("this lender trusts no TPM manufacturer CA (put their certificates in "
                               f"DATA/enroll/{MANUFACTURERS_DIR}/)")
    if not _within(cert, now):
        raise AttestationError("the EK certificate is outside its validity period")
    current = cert
    for _ in range(MAX_CHAIN):
        issuer = next((ca for ca in cas if ca.subject == current.issuer and _issued_by(current, ca)), None)
        if issuer is None:
            raise AttestationError(f"the EK certificate does not chain to a trusted TPM manufacturer CA "
                                   f"(issuer {current.issuer.rfc4514_string()!r} is not one, or did not sign it)")
        if not _within(issuer, now):
            raise AttestationError(f"TPM manufacturer CA {issuer.subject.rfc4514_string()!r} is outside its "
                                   "validity period")
        if issuer.subject == issuer.issuer or not any(ca.subject == issuer.issuer for ca in cas):
            return cert  # a root, or the highest CA the lender chose to trust
        current = issuer
    raise AttestationError("the EK certificate's chain is longer than the lender follows")


def _unmarshal(kind, data: bytes, what: str):
    try:
        value, used = kind.unmarshal(data)
    except Exception as exc:  # tpm2-pytss raises several kinds on malformed input
        raise AttestationError(f"the {what} is not a marshalled {kind.__name__}: {exc}") from exc
    if used != len(data):
        raise AttestationError(f"the {what} has {len(data) - used} bytes after its {kind.__name__}")
    return value


def _p256_point(public) -> bytes:
    ecc = public.publicArea.unique.ecc
    return b"\x04" + bytes(ecc.x).rjust(32, b"\0") + bytes(ecc.y).rjust(32, b"\0")


def verify(body: EnrollmentBody, cas: list[x509.Certificate]) -> Credential:
    """Check `body`'s attestation ((1)-(4) of the module docstring) and make the credential for its answer."""
    try:
        from tpm2_pytss import TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE
        from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPM2_ST, TPMA_OBJECT
        from tpm2_pytss.utils import NoSuchIndex, create_ek_template, make_credential
    except ImportError as exc:
        raise AttestationError("this lender cannot check TPM attestations (install the tpm extra: tpm2-pytss)") from exc
    attestation = body.attestation
    if attestation is None:
        raise AttestationError("the request carries no TPM attestation")
    ek_cert = check_chain(attestation.ek_certificate, cas)
    ek_key = ek_cert.public_key()
    if not isinstance(ek_key, rsa.RSAPublicKey) or ek_key.key_size != 2048:
        raise AttestationError("the EK certificate is not for an RSA 2048 endorsement key (the one this lender reads)")
    ak = _unmarshal(TPM2B_PUBLIC, attestation.ak_public, "attestation key")
    key = _unmarshal(TPM2B_PUBLIC, attestation.key_public, "device key's public area")
    info = _unmarshal(TPMS_ATTEST, attestation.certify_info, "certification")
    signature = _unmarshal(TPMT_SIGNATURE, attestation.signature, "certification's signature")
    fixed = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
    area = ak.publicArea
    if area.type != TPM2_ALG.ECC or area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256 \
            or area.nameAlg != TPM2_ALG.SHA256 \
            or (area.objectAttributes & (fixed | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT)) \
            != fixed | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT \
            or area.objectAttributes & TPMA_OBJECT.DECRYPT:
        raise AttestationError("the attestation key is not a restricted, fixedTPM ECDSA P-256 signing key")
    device_area = key.publicArea
    if _p256_point(key) != body.public_key or device_area.type != TPM2_ALG.ECC \
            or device_area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
        raise AttestationError("the certified public area is not the request's device key")
    if device_area.objectAttributes & fixed != fixed or not device_area.objectAttributes & TPMA_OBJECT.SIGN_ENCRYPT:
        raise AttestationError("the device key was not made inside the TPM to stay there "
                               "(fixedTPM, fixedParent, sensitiveDataOrigin)")
    if info.magic != TPM_GENERATED or info.type != TPM2_ST.ATTEST_CERTIFY:
        raise AttestationError("the certification is not a TPM-generated TPM2_Certify")
    if bytes(info.extraData) != certify_data(body.device, body.nonce):
        raise AttestationError("the certification was made for another request (its qualifying data differ)")
    if bytes(info.attested.certify.name) != bytes(key.get_name()):
        raise AttestationError("the certification names another key than the request's device key")
    if signature.sigAlg != TPM2_ALG.ECDSA or signature.signature.ecdsa.hash != TPM2_ALG.SHA256:
        raise AttestationError("the certification's signature is not ECDSA with SHA-256")
    ak_key = ec.EllipticCurvePublicNumbers(int.from_bytes(bytes(area.unique.ecc.x), "big"),
                                           int.from_bytes(bytes(area.unique.ecc.y), "big"),
                                           ec.SECP256R1()).public_key()
    der = encode_dss_signature(int.from_bytes(bytes(signature.signature.ecdsa.signatureR), "big"),
                               int.from_bytes(bytes(signature.signature.ecdsa.signatureS), "big"))
    try:
        ak_key.verify(der, attestation.certify_info, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise AttestationError("the attestation key's signature over the certification does not verify") from exc

    def no_template(index):  # the lender builds the EK's default template: it has no NV to read
        raise NoSuchIndex(index)
    _, ek_public = create_ek_template("EK-RSA2048", no_template)
    ek_public.publicArea.unique.rsa = ek_key.public_numbers().n.to_bytes(256, "big")
    secret = os.urandom(32)
    id_object, encrypted_secret = make_credential(ek_public, secret, ak.get_name())
    return Credential(id_object.marshal(), encrypted_secret.marshal(), secret)


def attestation_key_point(ak_public: bytes) -> bytes:
    """The attestation key's 65-byte P-256 point, from its marshalled TPM2B_PUBLIC (as a request carries it): what
    the lender checks the device's later TPM statements with (its envelope counter, telemetry.tpmcount)."""
    from tpm2_pytss import TPM2B_PUBLIC
    return _p256_point(_unmarshal(TPM2B_PUBLIC, ak_public, "attestation key"))


def recorded_attestation_key(enroll_folder: str | os.PathLike, device: str) -> bytes | None:
    """The P-256 point of the attestation key a `tpm-attested` device's enrollment proved to be in its TPM
    (``DATA/enroll/requests/<device>.json``; `enroll_folder` is ``DATA/enroll``), or None for any other device.
    Records written before the point was kept there give it from the attested request they hold."""
    import base64
    import json

    from lender.evidence.registry import KeyStorage, check_device_id
    from telemetry.enrollment import EnrollmentRequest
    from telemetry.exc import EnrollmentFormatError

    try:
        path = Path(enroll_folder) / "requests" / f"{check_device_id(device)}.json"
        record = json.loads(path.read_text("utf-8"))
        if record.get("key_storage") != KeyStorage.TPM_ATTESTED.value:
            return None
        if record.get("attestation_key_hex"):
            return bytes.fromhex(record["attestation_key_hex"])
        body = EnrollmentRequest.decode(base64.b64decode(record["request_b64"])).body
        return attestation_key_point(body.attestation.ak_public) if body.attestation else None
    except (OSError, ValueError, KeyError, TypeError, EnrollmentFormatError, AttestationError, ImportError):
        return None


def fingerprint(cert_der: bytes) -> str:
    """SHA-256 of a certificate (hex): how the enrollment record names the EK certificate it checked."""
    return hashlib.sha256(cert_der).hexdigest()


__all__ = ["AttestationError", "Credential", "attestation_key_point", "check_chain", "fingerprint",
           "recorded_attestation_key", "manufacturer_cas", "manufacturers_dir",
           "verify"]
