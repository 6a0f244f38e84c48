"""Where a gateway's signing key lives: a seed file (`software`) or a TPM 2.0 (`tpm`), behind one interface.

`software` is today's key: a 32-byte Ed25519 seed in a 0600 file
(`durable.keyfile`), signing EdDSA. Whoever copies the disk can sign as the
device.

`tpm` is a P-256 key created inside the TPM at provisioning (fixedTPM,
fixedParent, sensitiveDataOrigin, userWithAuth, sign; not restricted, not
decrypt) as a primary key of the owner hierarchy with a random `unique`, made
persistent at `DEFAULT_TPM_HANDLE` (TPM2_EvictControl), so it survives reboots
and never leaves the chip: the disk holds only its description (`device.keystore`,
JSON: kind, TCTI, handle, and the public key it must still be). It signs ES256:
SHA-256 of the message in software, TPM2_Sign (ECDSA, SHA-256, no ticket) on
the digest, the result normalised to low S (`telemetry.identity.low_s`).

tpm2-pytss is imported only when a TPM is used, so a gateway without one (and
a laptop running the lender) never needs it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from durable.exc import (
    KeyStoreConfigError,
    KeyStoreError,
    TpmKeyMismatchError,
    TpmRefusedError,
    TpmUnavailableError,
)
from durable.files import atomic_write
from durable.keyfile import create_key, read_key
from telemetry.identity import Identity, kid_of, low_s
from telemetry.numbers import ALG_ES256

KEYSTORE_FILE = "device.keystore"
KINDS = ("software", "tpm")
DEFAULT_TPM_HANDLE = 0x81010050      # owner persistent range 0x81000000-0x817FFFFF (TCG handle registry): pledgewatch's
TPM_DEVICES = ("/dev/tpmrm0", "/dev/tpm0")  # the kernel's resource manager first (several clients), then the raw device


def default_tcti() -> str:
    """The TCTI of this machine's TPM: the kernel resource manager, else the raw device; TpmUnavailableError if none."""
    for device in TPM_DEVICES:
        if os.path.exists(device):
            return f"device:{device}"
    raise TpmUnavailableError("no TPM on this machine (no /dev/tpmrm0 or /dev/tpm0): fit the TPM HAT and enable it "
                              "(dtoverlay=tpm-slb9670 in /boot/firmware/config.txt), or use --key-store software")


@dataclass(frozen=True, slots=True)
class KeyStoreDescription:
    """What `device.keystore` says: the kind, and for a TPM its TCTI, its handle and the public key it must hold."""

    kind: str
    tcti: str | None = None
    handle: int = DEFAULT_TPM_HANDLE
    public_key: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise KeyStoreConfigError(f"key store kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 0x81000000 <= self.handle <= 0x817FFFFF:
            raise KeyStoreConfigError(f"TPM handle {self.handle:#x} is not an owner persistent handle "
                                      "(0x81000000..0x817FFFFF)")

    def to_json(self) -> dict:
        return {"kind": self.kind, "tcti": self.tcti, "handle": f"{self.handle:#x}",
                "public_key_hex": None if self.public_key is None else self.public_key.hex()}

    @classmethod
    def read(cls, path: Path) -> KeyStoreDescription:
        try:
            item = json.loads(Path(path).read_text("utf-8"))
            return cls(item["kind"], item.get("tcti"), int(item.get("handle", hex(DEFAULT_TPM_HANDLE)), 16),
                       bytes.fromhex(item["public_key_hex"]) if item.get("public_key_hex") else None)
        except OSError as exc:
            raise KeyStoreError(f"cannot read the key store description {path}: {exc.strerror}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyStoreConfigError(f"{path} is not a key store description ({exc})") from exc


class TpmKey:
    """A P-256 signing key inside a TPM: signs ES256 (`telemetry.identity.Signer`); its secret never leaves the chip."""

    algorithm = ALG_ES256

    def __init__(self, esapi, handle: int, public_key: bytes) -> None:
        self._esapi = esapi
        self.handle = handle
        self.public_key = public_key
        self.kid = kid_of(public_key)
        self._key = esapi.tr_from_tpmpublic(handle)

    def sign(self, message: bytes) -> bytes:
        """The ES256 signature r || s (low S) of `message`, made by the TPM over its SHA-256."""
        from tpm2_pytss import TPM2B_DIGEST, TPMT_SIG_SCHEME, TPMT_TK_HASHCHECK, TSS2_Exception
        from tpm2_pytss.constants import TPM2_ALG, TPM2_RH, TPM2_ST

        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.any.hashAlg = TPM2_ALG.SHA256
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        try:
            signature = self._esapi.sign(self._key, TPM2B_DIGEST(hashlib.sha256(message).digest()), scheme, ticket)
        except TSS2_Exception as exc:
            raise _tpm_error(exc, "sign") from exc
        return low_s(int.from_bytes(bytes(signature.signature.ecdsa.signatureR), "big"),
                     int.from_bytes(bytes(signature.signature.ecdsa.signatureS), "big"))

    def close(self) -> None:
        self._esapi.close()

    def __repr__(self) -> str:
        return f"TpmKey(handle={self.handle:#x}, kid={self.kid.hex()})"


def _tpm_error(exc: Exception, doing: str) -> KeyStoreError:
    from tpm2_pytss.constants import TPM2_RC

    code = getattr(exc, "rc", None)
    text = str(exc)
    base = code & 0xFFF if isinstance(code, int) else None
    if base == TPM2_RC.LOCKOUT & 0xFFF or "lockout" in text.lower():
        return TpmRefusedError(f"the TPM is in dictionary-attack lockout ({doing}): wait for it to recover, or clear "
                               "it with the lockout password (tpm2_dictionarylockout -c)")
    if "auth" in text.lower() and ("fail" in text.lower() or "bad" in text.lower()):
        return TpmRefusedError(f"the TPM's owner hierarchy has a password ({doing} refused): provisioning needs the "
                               "owner hierarchy without one (tpm2_changeauth -c owner -p OLD)")
    return KeyStoreError(f"the TPM refused to {doing}: {text}")


def _esapi(tcti: str):
    try:
        from tpm2_pytss import ESAPI, TSS2_Exception
    except ImportError as exc:
        raise TpmUnavailableError("tpm2-pytss is not installed (pip install tpm2-pytss; it needs libtss2-dev)") from exc
    try:
        return ESAPI(tcti)
    except (TSS2_Exception, OSError, RuntimeError, ValueError) as exc:
        raise TpmUnavailableError(f"no TPM answers at {tcti!r}: {exc}") from exc


def _public_point(public) -> bytes:
    ecc = public.publicArea.unique.ecc
    return b"\x04" + bytes(ecc.x).rjust(32, b"\0") + bytes(ecc.y).rjust(32, b"\0")


def _preflight(esapi, tcti: str) -> None:
    """Refuse, in one line, a TPM in dictionary-attack lockout or whose owner hierarchy has a password
    (TPM2_GetCapability of TPM2_PT_PERMANENT): what a technician can fix before a key is made."""
    from tpm2_pytss.constants import TPM2_CAP, TPM2_PT, TPMA_PERMANENT

    _, data = esapi.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.PERMANENT, 1)
    found = [p for p in data.data.tpmProperties.tpmProperty if p.property == TPM2_PT.PERMANENT]
    permanent = TPMA_PERMANENT(found[0].value) if found else TPMA_PERMANENT(0)
    if permanent & TPMA_PERMANENT.INLOCKOUT:
        raise TpmRefusedError(f"the TPM at {tcti} is in dictionary-attack lockout: wait for its recovery time, or "
                              "clear it with the lockout password (tpm2_dictionarylockout -c -p LOCKOUT_PASSWORD)")
    if permanent & TPMA_PERMANENT.OWNERAUTHSET:
        raise TpmRefusedError(f"the TPM at {tcti} has an owner hierarchy password: remove it "
                              "(tpm2_changeauth -c owner -p OLD_PASSWORD) or clear the TPM, then provision again")


def evict_tpm_key(tcti: str, handle: int, public_key: bytes) -> bool:
    """Remove the persistent key at `handle` if it is `public_key` (a provisioning run undone, a rotated key);
    whether one was removed. Never touches a key that is not the one named."""
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR

    esapi = _esapi(tcti)
    try:
        try:
            key_handle = esapi.tr_from_tpmpublic(handle)
            public, _, _ = esapi.read_public(key_handle)
        except TSS2_Exception:
            return False
        if _public_point(public) != public_key:
            return False
        esapi.evict_control(ESYS_TR.OWNER, key_handle, handle)
        return True
    except TSS2_Exception as exc:
        raise _tpm_error(exc, f"remove the key at {handle:#x}") from exc
    finally:
        esapi.close()


def create_tpm_key(tcti: str, handle: int = DEFAULT_TPM_HANDLE) -> TpmKey:
    """Create a P-256 signing key in the TPM and make it persistent at `handle` (refused if the handle is taken,
    the TPM is in lockout, or its owner hierarchy has a password)."""
    from tpm2_pytss import TPM2B_PUBLIC, TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT

    esapi = _esapi(tcti)
    try:
        _preflight(esapi, tcti)
        attributes = (TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
                      | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT)
        template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=attributes)
        template.publicArea.unique.ecc.x = os.urandom(32)  # a key of its own, not one re-derivable from the template
        try:
            existing = esapi.tr_from_tpmpublic(handle)
        except TSS2_Exception:
            existing = None
        if existing is not None:
            raise KeyStoreError(f"the TPM already holds a key at handle {handle:#x}: keep it (rerun without "
                                f"--rotate) or evict it first (tpm2_evictcontrol -C o -c {handle:#x})")
        transient, public, *_ = esapi.create_primary(None, template, ESYS_TR.OWNER)
        esapi.evict_control(ESYS_TR.OWNER, transient, handle)
        esapi.flush_context(transient)
        return TpmKey(esapi, handle, _public_point(public))
    except TSS2_Exception as exc:
        esapi.close()
        raise _tpm_error(exc, "create the device key") from exc
    except BaseException:
        esapi.close()
        raise


def open_tpm_key(tcti: str, handle: int = DEFAULT_TPM_HANDLE, public_key: bytes | None = None) -> TpmKey:
    """The TPM key at `handle`; TpmKeyMismatchError if it is not `public_key` (another TPM, a replaced key)."""
    from tpm2_pytss import TSS2_Exception

    esapi = _esapi(tcti)
    try:
        key_handle = esapi.tr_from_tpmpublic(handle)
        public, _, _ = esapi.read_public(key_handle)
        found = _public_point(public)
    except TSS2_Exception as exc:
        esapi.close()
        raise KeyStoreError(f"the TPM at {tcti!r} holds no device key at handle {handle:#x} ({exc}): "
                            "provision this gateway with --key-store tpm") from exc
    if public_key is not None and found != public_key:
        esapi.close()
        raise TpmKeyMismatchError(f"the TPM's key at {handle:#x} is {kid_of(found).hex()}, not the provisioned key "
                                  f"{kid_of(public_key).hex()}: this is not the TPM this gateway was provisioned with")
    return TpmKey(esapi, handle, found)


def create_device_key(state_dir: Path, kind: str, *, key_file: str = "device.key", tcti: str | None = None,
                      handle: int = DEFAULT_TPM_HANDLE):
    """Make the device key of `kind` for a gateway whose state is in `state_dir`; its description is written there."""
    Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    description_path = Path(state_dir) / KEYSTORE_FILE
    if kind == "software":
        identity = Identity(create_key(Path(state_dir) / key_file))
        description = KeyStoreDescription("software", public_key=identity.public_key)
    elif kind == "tpm":
        tcti = tcti or default_tcti()
        identity = create_tpm_key(tcti, handle)
        description = KeyStoreDescription("tpm", tcti, handle, identity.public_key)
    else:
        raise KeyStoreConfigError(f"key store kind {kind!r} is not one of {', '.join(KINDS)}")
    atomic_write(description_path, (json.dumps(description.to_json(), indent=1) + "\n").encode())
    return identity


def open_device_key(state_dir: Path, *, key_file: str = "device.key", kind: str | None = None):
    """The gateway's signer: what `device.keystore` describes, or the seed file when there is no description.

    `kind` (agent.toml's ``[device] key_store``) is the kind the gateway was provisioned with: a description of
    another kind, or a TPM gateway's description gone (a seed file put in its place), is refused."""
    if kind is not None and kind not in KINDS:
        raise KeyStoreConfigError(f"key store kind {kind!r} is not one of {', '.join(KINDS)}")
    description_path = Path(state_dir) / KEYSTORE_FILE
    if not description_path.exists():
        if kind == "tpm":
            raise KeyStoreConfigError(f"this gateway's key is in its TPM (key_store = \"tpm\"), but "
                                      f"{description_path} is missing: restore it, or provision again")
        return Identity(read_key(Path(state_dir) / key_file))
    description = KeyStoreDescription.read(description_path)
    if kind is not None and description.kind != kind:
        raise KeyStoreConfigError(f"{description_path} describes a {description.kind} key, the config says "
                                  f"key_store = {kind!r}: provision again rather than mix the two")
    if description.kind == "software":
        identity = Identity(read_key(Path(state_dir) / key_file))
        if description.public_key not in (None, identity.public_key):
            raise TpmKeyMismatchError(f"{Path(state_dir) / key_file} is not the key {description_path} names")
        return identity
    return open_tpm_key(description.tcti or default_tcti(), description.handle, description.public_key)


# --- attestation: what the enrollment request carries, and the lender's credential --------------------------

EK_CERTIFICATE_NV_INDEX = 0x01C00002   # TCG EK Credential Profile: the RSA 2048 EK certificate (low range)
_AK_ATTRIBUTES = ("RESTRICTED", "SIGN_ENCRYPT", "FIXEDTPM", "FIXEDPARENT", "SENSITIVEDATAORIGIN", "USERWITHAUTH")


def _nv_reader(esapi):
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.utils import NoSuchIndex

    def read(index) -> bytes:
        try:
            nv = esapi.tr_from_tpmpublic(index)
        except TSS2_Exception:
            raise NoSuchIndex(index) from None
        public, _ = esapi.nv_read_public(nv)
        size, data, offset = public.nvPublic.dataSize, b"", 0
        while offset < size:  # a TPM reads at most TPM2_PT_NV_BUFFER_MAX (often 768-1024 bytes) at once
            chunk = bytes(esapi.nv_read(nv, min(512, size - offset), offset))
            data, offset = data + chunk, offset + len(chunk)
        return data
    return read


def _ak_template():
    """The attestation key: a restricted ECDSA P-256 (SHA-256) signing key, primary in the endorsement hierarchy.

    A primary key comes from the hierarchy's seed and its template alone, so the same TPM re-derives the same
    key whenever asked (at the request, and again days later when the lender's answer arrives); nothing to
    keep at a handle. Clearing the TPM changes the seed, as it destroys the device key."""
    from tpm2_pytss import TPM2B_PUBLIC
    from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT

    attributes = TPMA_OBJECT(0)
    for name in _AK_ATTRIBUTES:
        attributes |= getattr(TPMA_OBJECT, name)
    template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=attributes)
    template.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
    return template


def _endorsement_keys(esapi):
    """(EK handle, AK handle, AK public) of this TPM, both transient: flush them after use."""
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.utils import create_ek_template

    _, ek_template = create_ek_template("EK-RSA2048", _nv_reader(esapi))
    ek, *_ = esapi.create_primary(None, ek_template, ESYS_TR.ENDORSEMENT)
    try:
        ak, ak_public, *_ = esapi.create_primary(None, _ak_template(), ESYS_TR.ENDORSEMENT)
    except BaseException:
        esapi.flush_context(ek)
        raise
    return ek, ak, ak_public


def attest_tpm_key(key: TpmKey, qualifying_data: bytes) -> dict[str, bytes] | None:
    """The TPM's evidence that `key` lives in it: the EK certificate, the attestation key's and the device key's
    TPM2B_PUBLIC, and TPM2_Certify of the device key by the attestation key over `qualifying_data` (TPMS_ATTEST,
    TPMT_SIGNATURE), all as bytes (telemetry.enrollment.TpmAttestation's fields); None when the TPM has no EK
    certificate to show (then the key can only be enrolled as `software`). Uses `key`'s own TPM connection."""
    from tpm2_pytss import TPM2B_DATA, TPMT_SIG_SCHEME, TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.utils import NoSuchIndex

    esapi = key._esapi
    try:
        try:
            certificate = _nv_reader(esapi)(EK_CERTIFICATE_NV_INDEX)
        except NoSuchIndex:
            return None
        key_public, _, _ = esapi.read_public(key._key)
        if _public_point(key_public) != key.public_key:
            raise TpmKeyMismatchError(f"the TPM's key at {key.handle:#x} is not the device key {key.kid.hex()}")
        ek, ak, ak_public = _endorsement_keys(esapi)
        try:
            scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
            scheme.details.any.hashAlg = TPM2_ALG.SHA256
            attest, signature = esapi.certify(key._key, ak, TPM2B_DATA(qualifying_data), scheme,
                                              session1=ESYS_TR.PASSWORD, session2=ESYS_TR.PASSWORD)
        finally:
            esapi.flush_context(ak)
            esapi.flush_context(ek)
        return {"ek_certificate": certificate, "ak_public": ak_public.marshal(), "key_public": key_public.marshal(),
                "certify_info": bytes(attest), "signature": signature.marshal()}
    except TSS2_Exception as exc:
        raise _tpm_error(exc, "certify the device key") from exc


def activate_credential(key: TpmKey, id_object: bytes, encrypted_secret: bytes) -> bytes:
    """TPM2_ActivateCredential of the lender's credential with the EK and attestation key of `key`'s TPM: the
    secret, which only the TPM whose EK the lender checked, holding that attestation key, can recover."""
    from tpm2_pytss import TPM2B_DIGEST, TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPM2B_NONCE, TPMT_SYM_DEF, \
        TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE

    esapi = key._esapi
    try:
        ek, ak, _ = _endorsement_keys(esapi)
        try:
            session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                               TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
            try:
                # the EK's policy: PolicySecret of the endorsement hierarchy (TCG EK Credential Profile)
                esapi.policy_secret(ESYS_TR.ENDORSEMENT, session, TPM2B_NONCE(), TPM2B_DIGEST(), TPM2B_NONCE(), 0)
                secret = esapi.activate_credential(ak, ek, TPM2B_ID_OBJECT.unmarshal(id_object)[0],
                                                   TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)[0],
                                                   session1=ESYS_TR.PASSWORD, session2=session)
            finally:
                try:
                    esapi.flush_context(session)
                except TSS2_Exception:
                    pass  # a policy session used by a command may be gone already
        finally:
            esapi.flush_context(ak)
            esapi.flush_context(ek)
        return bytes(secret)
    except TSS2_Exception as exc:
        raise _tpm_error(exc, "activate the lender's credential") from exc
