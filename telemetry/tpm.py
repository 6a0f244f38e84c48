"""What a gateway's TPM signs into its evidence, read back (TPM 2.0 Part 2 structures, big-endian).

The TPM counter statement (telemetry.tpmcount) and the new key's certification
at a rotation (telemetry.rotation) are both a TPMS_ATTEST signed by the
attestation key the lender checked at enrollment. `attested` checks that
signature and that the TPM made the structure, and hands back a `Reader`
positioned after its type, for the caller to read the rest. Pure: no TPM, no I/O.
"""
from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from telemetry.exc import TelemetryError

TPM_GENERATED = 0xFF544347        # TPMS_ATTEST.magic: only the TPM writes it in what a restricted key signs
ALG_ECDSA, ALG_SHA256 = 0x0018, 0x000B


class Reader:
    """A TPM structure read front to back; `error` (a TelemetryError class) says where it does not hold up."""

    def __init__(self, data: bytes, what: str, error: type[TelemetryError]) -> None:
        self.data, self.at, self.what, self.error = bytes(data), 0, what, error

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise self.error(f"the {self.what} ends early")
        self.at += n
        return self.data[self.at - n:self.at]

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def sized(self) -> bytes:
        """A TPM2B: its 2-byte size, then that many bytes."""
        return self.take(self.uint(2))

    def end(self) -> None:
        if self.at != len(self.data):
            raise self.error(f"the {self.what} has {len(self.data) - self.at} bytes after its end")


def attested(attest: bytes, signature: bytes, attestation_key: bytes, kind: int, what: str,
             error: type[TelemetryError]) -> Reader:
    """Check that `signature` (TPMT_SIGNATURE, ECDSA with SHA-256) over `attest` is the attestation key's (a 65-byte
    P-256 point) and that `attest` is a TPM-generated TPMS_ATTEST of type `kind`; the Reader is at its
    qualifiedSigner. `error` says why not, naming `what` (e.g. "the new key's certification")."""
    sig = Reader(signature, f"signature over {what}", error)
    if sig.uint(2) != ALG_ECDSA or sig.uint(2) != ALG_SHA256:
        raise error(f"the signature over {what} is not ECDSA with SHA-256")
    r, s = int.from_bytes(sig.sized(), "big"), int.from_bytes(sig.sized(), "big")
    sig.end()
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(attestation_key))
        key.verify(encode_dss_signature(r, s), bytes(attest), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise error(f"the attestation key's signature over {what} does not verify (not this device's TPM, or it "
                    "was edited)") from exc
    read = Reader(attest, what, error)
    if read.uint(4) != TPM_GENERATED or read.uint(2) != kind:
        raise error(f"{what} is not a TPM-generated attestation of type {kind:#06x}")
    return read


__all__ = ["ALG_ECDSA", "ALG_SHA256", "TPM_GENERATED", "Reader", "attested"]
