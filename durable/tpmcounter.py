"""The TPM's count of a gateway's envelope signatures: an NV counter incremented before every signature (issue 14).

The borrower is root on the gateway. With the key in the TPM they cannot sign
on a laptop, but they can copy the state directory and spool, let the agent
sign (an alarm, say) while the uplink is cut, restore the copy and restart:
the agent signs the same seqs again and the lender, which never saw the lost
ones, sees an unbroken chain. Only something in the chip that cannot go back
reveals it. That is an NV counter (TPM_NT_COUNTER at `COUNTER_INDEX`):

* `CountedTpmKey.sign` increments it (TPM2_NV_Increment) and only then asks
  the TPM to sign: every envelope the agent signs costs one count, and a
  restored directory cannot take counts back (a counter only goes up; one
  undefined and defined again starts at the highest count the TPM ever held,
  TPM 2.0 Part 1 "NV Counters", so that gains nothing either).
* `CountedTpmKey.certify` is TPM2_NV_Certify of the counter by the attestation
  key the lender checked at enrollment (durable.keystore's AK: a primary of the
  endorsement hierarchy, re-derived here), over qualifying data that names the
  envelope it will travel in (telemetry.tpmcount.qualifying_data). The agent
  puts it in the first envelope of every boot (agent.recorder); the lender
  compares the counts between two such statements with the seqs between them
  (lender.evidence.risks, kind ``rollback``).

The index is defined at first use (owner authorisation, which provisioning
already requires to be empty), not orderly (an orderly counter jumps forward
after a power cut, which would read as signatures the lender never got), and
incremented once so that it can be read. Nothing here runs for a software key.
"""
from __future__ import annotations

import logging

from durable.exc import KeyStoreError
from durable.keystore import TpmKey, ak_template, ecdsa_sha256_scheme, tpm_error

log = logging.getLogger(__name__)

COUNTER_INDEX = 0x01500050   # owner NV range 0x01000000-0x013FFFFF is the TCG's; 0x015xxxxx is the owner's own


def _counter_public(index: int):
    from tpm2_pytss import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC
    from tpm2_pytss.constants import TPM2_ALG, TPM2_NT, TPMA_NV

    attributes = (TPMA_NV(TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT) | TPMA_NV.AUTHWRITE | TPMA_NV.AUTHREAD
                  | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA)
    return TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=attributes,
                                                   dataSize=8))


class TpmCounter:
    """The NV counter at `index` of the TPM behind `esapi` (defined and initialised at first use)."""

    def __init__(self, esapi, index: int = COUNTER_INDEX) -> None:
        from tpm2_pytss import TSS2_Exception
        from tpm2_pytss.constants import ESYS_TR, TPM2_NT, TPMA_NV

        self._esapi = esapi
        self.index = index
        try:
            try:
                self._nv = esapi.tr_from_tpmpublic(index)
            except TSS2_Exception:
                self._nv = esapi.nv_define_space(b"", _counter_public(index), ESYS_TR.OWNER)
                log.info("defined the TPM's envelope counter at NV index %#x", index)
            public, _ = esapi.nv_read_public(self._nv)
            attributes = public.nvPublic.attributes
            if (attributes & TPMA_NV.TPM2_NT_MASK) >> TPMA_NV.TPM2_NT_SHIFT != TPM2_NT.COUNTER:
                raise KeyStoreError(f"NV index {index:#x} of the TPM is not a counter: it is not this agent's "
                                    f"(remove it: tpm2_nvundefine {index:#x}, then start again)")
            if not attributes & TPMA_NV.WRITTEN:
                esapi.nv_increment(self._nv, self._nv)  # a counter can be read once it has counted once
            self.public = public.nvPublic.marshal()  # TPMS_NV_PUBLIC, WRITTEN set: what the lender hashes to the name
            if not attributes & TPMA_NV.WRITTEN:
                public, _ = esapi.nv_read_public(self._nv)
                self.public = public.nvPublic.marshal()
        except TSS2_Exception as exc:
            raise tpm_error(exc, f"open the envelope counter at NV index {index:#x}") from exc

    def increment(self) -> None:
        from tpm2_pytss import TSS2_Exception
        try:
            self._esapi.nv_increment(self._nv, self._nv)
        except TSS2_Exception as exc:
            raise tpm_error(exc, "count the signature (TPM2_NV_Increment)") from exc

    def value(self) -> int:
        from tpm2_pytss import TSS2_Exception
        try:
            return int.from_bytes(bytes(self._esapi.nv_read(self._nv, 8, 0, self._nv)), "big")
        except TSS2_Exception as exc:
            raise tpm_error(exc, "read the envelope counter") from exc

    def certify(self, qualifying_data: bytes) -> tuple[bytes, bytes]:
        """TPM2_NV_Certify of the counter by the attestation key over `qualifying_data`: (TPMS_ATTEST, TPMT_SIGNATURE)."""
        from tpm2_pytss import TPM2B_DATA, TSS2_Exception
        from tpm2_pytss.constants import ESYS_TR

        esapi = self._esapi
        try:
            ak, *_ = esapi.create_primary(None, ak_template(), ESYS_TR.ENDORSEMENT)
            try:
                attest, signature = esapi.nv_certify(ak, self._nv, TPM2B_DATA(qualifying_data), ecdsa_sha256_scheme(),
                                                     8, 0, auth_handle=self._nv, session1=ESYS_TR.PASSWORD,
                                                     session2=ESYS_TR.PASSWORD)
            finally:
                esapi.flush_context(ak)
        except TSS2_Exception as exc:
            raise tpm_error(exc, "certify the envelope counter (TPM2_NV_Certify)") from exc
        return bytes(attest), signature.marshal()


class CountedTpmKey:
    """A `TpmKey` whose every signature is counted first: `sign` = TPM2_NV_Increment, then TPM2_Sign.

    Anything else (public key, kid, handle, the TPM connection durable.keystore's attestation uses) is the key's."""

    def __init__(self, key: TpmKey, index: int = COUNTER_INDEX) -> None:
        self.key = key
        self.counter = TpmCounter(key._esapi, index)

    def sign(self, message: bytes) -> bytes:
        self.counter.increment()   # before the signature: no signature of this agent without its count
        return self.key.sign(message)

    def certify(self, qualifying_data: bytes) -> tuple[bytes, bytes, bytes]:
        """(TPMS_NV_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE): the counter, certified over `qualifying_data`."""
        attest, signature = self.counter.certify(qualifying_data)
        return self.counter.public, attest, signature

    def __getattr__(self, name: str):
        return getattr(self.key, name)

    def __repr__(self) -> str:
        return f"CountedTpmKey({self.key!r}, counter={self.counter.index:#x})"


def counted(identity):
    """`identity` with its signatures counted when it is a TPM key (a `CountedTpmKey`); any other signer as it is.

    A TPM that will not give the counter (its NV full, the index taken by something else) leaves the key
    uncounted, logged: the agent keeps signing evidence, and the lender names the boot that began without a
    counter statement (lender.evidence.risks, rollback) rather than losing the readings too."""
    if isinstance(identity, TpmKey):
        try:
            return CountedTpmKey(identity)
        except KeyStoreError as exc:
            log.error("envelope signatures are NOT counted by the TPM this run (the lender will flag it): %s", exc)
    return identity


__all__ = ["COUNTER_INDEX", "CountedTpmKey", "TpmCounter", "counted"]
