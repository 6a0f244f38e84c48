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
import re
from dataclasses import dataclass, replace
from pathlib import Path

from durable.exc import (
    KeyStoreConfigError,
    KeyStoreError,
    TpmKeyMismatchError,
    TpmRefusedError,
    TpmUnavailableError,
)
from durable.files import atomic_write
from durable.keyfile import create_key, read_key, write_key
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
    """What `device.keystore` says: the kind, and for a TPM its TCTI, its handle and the public key it must hold.

    After a key rotation (`DeviceKeys`) it also says which seed file holds a software key (`key_file`, else the
    config's), which rotate-key command put this key in force (`rotated_by`, its digest), the keys it retired
    (`retired`: their public keys and the handover seq, for the evidence they signed) and, while a rotation is
    under way, the new key made for it (`rotation`)."""

    kind: str
    tcti: str | None = None
    handle: int = DEFAULT_TPM_HANDLE
    public_key: bytes | None = None
    key_file: str | None = None
    rotated_by: bytes | None = None
    retired: tuple = ()
    rotation: dict | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise KeyStoreConfigError(f"key store kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not 0x81000000 <= self.handle <= 0x817FFFFF:
            raise KeyStoreConfigError(f"TPM handle {self.handle:#x} is not an owner persistent handle "
                                      "(0x81000000..0x817FFFFF)")

    def to_json(self) -> dict:
        item = {"kind": self.kind, "tcti": self.tcti, "handle": f"{self.handle:#x}",
                "public_key_hex": None if self.public_key is None else self.public_key.hex()}
        if self.key_file is not None:
            item["key_file"] = self.key_file
        if self.rotated_by is not None:
            item["rotated_by_hex"] = self.rotated_by.hex()
        if self.retired:
            item["retired"] = list(self.retired)
        if self.rotation is not None:
            item["rotation"] = self.rotation
        return item

    def write(self, path: Path) -> None:
        """Replace the description at `path` in one step (a crash leaves the old one or this one)."""
        atomic_write(path, (json.dumps(self.to_json(), indent=1) + "\n").encode())

    @classmethod
    def read(cls, path: Path) -> KeyStoreDescription:
        try:
            item = json.loads(Path(path).read_text("utf-8"))
            return cls(item["kind"], item.get("tcti"), int(item.get("handle", hex(DEFAULT_TPM_HANDLE)), 16),
                       bytes.fromhex(item["public_key_hex"]) if item.get("public_key_hex") else None,
                       item.get("key_file"),
                       bytes.fromhex(item["rotated_by_hex"]) if item.get("rotated_by_hex") else None,
                       tuple(item.get("retired", ())), item.get("rotation"))
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
        from tpm2_pytss import TPM2B_DIGEST, TPMT_TK_HASHCHECK, TSS2_Exception
        from tpm2_pytss.constants import TPM2_RH, TPM2_ST

        scheme = ecdsa_sha256_scheme()
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        try:
            signature = self._esapi.sign(self._key, TPM2B_DIGEST(hashlib.sha256(message).digest()), scheme, ticket)
        except TSS2_Exception as exc:
            raise tpm_error(exc, "sign") from exc
        return low_s(int.from_bytes(bytes(signature.signature.ecdsa.signatureR), "big"),
                     int.from_bytes(bytes(signature.signature.ecdsa.signatureS), "big"))

    def close(self) -> None:
        self._esapi.close()

    def __repr__(self) -> str:
        return f"TpmKey(handle={self.handle:#x}, kid={self.kid.hex()})"


def ecdsa_sha256_scheme():
    """The signature scheme of every TPM signature here (device key, attestation key): ECDSA over SHA-256."""
    from tpm2_pytss import TPMT_SIG_SCHEME
    from tpm2_pytss.constants import TPM2_ALG

    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
    scheme.details.any.hashAlg = TPM2_ALG.SHA256
    return scheme


def tpm_error(exc: Exception, doing: str) -> KeyStoreError:
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
        raise tpm_error(exc, f"remove the key at {handle:#x}") from exc
    finally:
        esapi.close()


def create_tpm_key(tcti: str, handle: int = DEFAULT_TPM_HANDLE) -> TpmKey:
    """Create a P-256 signing key in the TPM and make it persistent at `handle` (refused if the handle is taken,
    the TPM is in lockout, or its owner hierarchy has a password)."""
    esapi = _esapi(tcti)
    try:
        return _create_tpm_key(esapi, tcti, handle)
    except BaseException:
        esapi.close()
        raise


def _create_tpm_key(esapi, tcti: str, handle: int) -> TpmKey:
    """`create_tpm_key` over an open TPM connection (the caller closes it on failure)."""
    from tpm2_pytss import TPM2B_PUBLIC, TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT

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
        raise tpm_error(exc, "create the device key") from exc


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
    description.write(description_path)
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
        seed_file = Path(state_dir) / (description.key_file or key_file)
        identity = Identity(read_key(seed_file))
        if description.public_key not in (None, identity.public_key):
            raise TpmKeyMismatchError(f"{seed_file} is not the key {description_path} names")
        return identity
    return open_tpm_key(description.tcti or default_tcti(), description.handle, description.public_key)


# --- rotation: the lender's rotate-key command (telemetry.rotation) -------------------------------------------

def _evict_on(esapi, handle: int, public_key: bytes | None) -> bool:
    """Remove the persistent key at `handle` over an open connection if it is `public_key` (any key when None)."""
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR

    try:
        key_handle = esapi.tr_from_tpmpublic(handle)
        public, _, _ = esapi.read_public(key_handle)
    except TSS2_Exception:
        return False
    if public_key is not None and _public_point(public) != public_key:
        return False
    try:
        esapi.evict_control(ESYS_TR.OWNER, key_handle, handle)
    except TSS2_Exception as exc:
        raise tpm_error(exc, f"remove the key at {handle:#x}") from exc
    return True


class DeviceKeys:
    """A gateway's key store as the rotate-key command changes it: make a new key of the same kind, switch, retire.

    The switch is one atomic replacement of `device.keystore`, in three steps
    the daemon drives around the handover envelope (telemetry.rotation):

    1. `prepare`: the new key is made (software: a new 0600 seed file beside
       the old; TPM: a new key at the other persistent handle) and the
       description names it as the rotation under way, with the chain's head
       seq before the handover (`after_seq`). The old key stays in force.
    2. the daemon signs the handover with the OLD key into the chain (seq
       `after_seq` + 1: nothing else is appended between the two steps).
    3. `complete`: the description names the new key, the command that put it
       in force and the retired key; then the old key is destroyed (its seed
       file removed, its TPM handle evicted): it is never used again.

    A power cut between 1 and 3 leaves the old key in force and the rotation
    under way; at the next start `settle` completes it when the chain's head is
    above `after_seq` (the handover was appended) and otherwise leaves the
    command owed, to be answered again with the same new key. A handover that
    could not be spooled is `abandon`ed at once (nothing was appended).
    """

    def __init__(self, folder: str | os.PathLike, key_file: str = "device.key", kind: str | None = None) -> None:
        self.folder = Path(folder)
        self.key_file = key_file
        self.kind = kind
        self.path = self.folder / KEYSTORE_FILE

    def open(self):
        """The signer in force (`open_device_key`)."""
        return open_device_key(self.folder, key_file=self.key_file, kind=self.kind)

    def description(self, current) -> KeyStoreDescription:
        """What `device.keystore` says, or, for a gateway from before key stores, what it would say of `current`."""
        if self.path.exists():
            return KeyStoreDescription.read(self.path)
        return KeyStoreDescription("software", public_key=current.public_key)

    def rotated_by(self) -> bytes | None:
        """The digest of the rotate-key command that put the key in force, None before any rotation."""
        return KeyStoreDescription.read(self.path).rotated_by if self.path.exists() else None

    def _open_next(self, described: KeyStoreDescription, rotation: dict, current):
        public = bytes.fromhex(rotation["public_key_hex"])
        if described.kind == "software":
            identity = Identity(read_key(self.folder / rotation["key_file"]))
            if identity.public_key != public:
                raise TpmKeyMismatchError(f"{self.folder / rotation['key_file']} is not the new key {self.path} names")
            return identity
        handle = int(rotation["handle"], 16)
        key = TpmKey(current._esapi, handle, public)   # the same connection: a TPM may serve one client at a time
        from tpm2_pytss import TSS2_Exception
        try:
            found, _, _ = current._esapi.read_public(key._key)
        except TSS2_Exception as exc:
            raise KeyStoreError(f"the new key at {handle:#x} is gone from the TPM: {exc}") from exc
        if _public_point(found) != public:
            raise TpmKeyMismatchError(f"the TPM's key at {handle:#x} is not the new key {self.path} names")
        return key

    def prepare(self, command_digest: bytes, after_seq: int, current):
        """Step 1: the new key for the rotate-key command `command_digest` (the same one again if a power cut
        interrupted this rotation), named in the description as under way after chain seq `after_seq`."""
        described = self.description(current)
        rotation = described.rotation
        if rotation is not None and rotation.get("command_hex") == command_digest.hex() \
                and rotation.get("public_key_hex"):
            new = self._open_next(described, rotation, current)
        else:
            if rotation is not None:   # a rotation never finished (another command's, or a key never named)
                self._destroy(described, rotation, current)
                described = replace(described, rotation=None)
            if described.kind == "software":
                seed = os.urandom(32)
                new = Identity(seed)
                name = f"{self.key_file}.{new.kid.hex()[:16]}"
                write_key(self.folder / name, seed, replace=True)   # mode 0600, like the first
                rotation = {"key_file": name}
            else:
                handle = DEFAULT_TPM_HANDLE + 1 if described.handle == DEFAULT_TPM_HANDLE else DEFAULT_TPM_HANDLE
                rotation = {"handle": f"{handle:#x}", "command_hex": command_digest.hex(), "public_key_hex": None}
                # the handle is named before the key is made there: a power cut in between leaves a key this
                # description owns (evicted on the next try), never one nobody names
                replace(described, rotation=dict(rotation, after_seq=None)).write(self.path)
                for old in described.retired:   # a retired key still there (a power cut before its eviction)
                    if old.get("handle") == rotation["handle"]:
                        _evict_on(current._esapi, handle, bytes.fromhex(old["public_key_hex"]))
                new = _create_tpm_key(current._esapi, described.tcti or default_tcti(), handle)
            rotation |= {"public_key_hex": new.public_key.hex(), "command_hex": command_digest.hex()}
        rotation = dict(rotation, after_seq=after_seq)
        replace(described, rotation=rotation).write(self.path)
        return new

    def discard(self, current) -> None:
        """No new key could be made: the rotation under way is forgotten (a key it made and named, destroyed;
        whatever holds a handle it only named is not its key, and stays)."""
        described = self.description(current)
        if described.rotation is not None:
            try:
                if described.rotation.get("public_key_hex"):
                    self._destroy(described, described.rotation, current)
            except KeyStoreError:
                pass   # the TPM refusing again: the rotation stays named, and the next one clears it
            else:
                replace(described, rotation=None).write(self.path)

    def abandon(self, current) -> None:
        """The handover could not be appended: nothing was signed after step 1 (the command stays owed)."""
        described = self.description(current)
        if described.rotation is not None:
            replace(described, rotation=dict(described.rotation, after_seq=None)).write(self.path)

    def complete(self, current, new, handover_seq: int):
        """Step 3: the handover (seq `handover_seq`) is in the chain: the new key is in force, the old one retired."""
        described = self.description(current)
        rotation = described.rotation
        if rotation is None or rotation["public_key_hex"] != new.public_key.hex():
            raise KeyStoreError(f"{self.path} names no rotation to the key {new.kid.hex()}")
        old = {"public_key_hex": current.public_key.hex(), "handover_seq": handover_seq}
        if described.kind == "software":
            old["key_file"] = described.key_file or self.key_file
            switched = replace(described, public_key=new.public_key, key_file=rotation["key_file"])
        else:
            old["handle"] = f"{described.handle:#x}"
            switched = replace(described, public_key=new.public_key, handle=int(rotation["handle"], 16))
        switched = replace(switched, rotated_by=bytes.fromhex(rotation["command_hex"]),
                           retired=described.retired + (old,), rotation=None)
        switched.write(self.path)
        self._destroy(switched, old, new)
        return new

    def settle(self, current, head_seq: int | None):
        """At start: finish a rotation whose handover a power cut left in the chain (head above its `after_seq`);
        the signer then in force. Retired keys a power cut left behind are destroyed."""
        if not self.path.exists():
            return current
        described = KeyStoreDescription.read(self.path)
        rotation = described.rotation
        if rotation is not None and rotation.get("after_seq") is not None and head_seq is not None \
                and head_seq > rotation["after_seq"]:
            return self.complete(current, self._open_next(described, rotation, current), rotation["after_seq"] + 1)
        for old in described.retired:
            self._destroy(described, old, current)
        if described.kind == "software":   # a new seed a power cut left before the description named it
            named = {described.key_file or self.key_file, (rotation or {}).get("key_file")}
            for stray in self.folder.glob(f"{self.key_file}.*"):
                if stray.name not in named and re.fullmatch(r"[0-9a-f]{16}", stray.name[len(self.key_file) + 1:]):
                    stray.unlink(missing_ok=True)
        return current

    def _destroy(self, described: KeyStoreDescription, key: dict, current) -> None:
        """Remove a key that is not in force: a retired one, or a new one of an unfinished rotation."""
        if described.kind == "software":
            name = key.get("key_file")
            if name and name != (described.key_file or self.key_file):
                (self.folder / name).unlink(missing_ok=True)
        elif key.get("handle") and int(key["handle"], 16) != described.handle:
            public = key.get("public_key_hex")   # None: a rotation's handle named before its key was made
            _evict_on(current._esapi, int(key["handle"], 16), bytes.fromhex(public) if public else None)


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


def ak_template():
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
        ak, ak_public, *_ = esapi.create_primary(None, ak_template(), ESYS_TR.ENDORSEMENT)
    except BaseException:
        esapi.flush_context(ek)
        raise
    return ek, ak, ak_public


def _certify(key: TpmKey, ak, qualifying_data: bytes):
    """TPM2_Certify of `key` by the loaded attestation key `ak` over `qualifying_data`, on `key`'s connection:
    (the key's TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE) as tpm2-pytss objects."""
    from tpm2_pytss import TPM2B_DATA
    from tpm2_pytss.constants import ESYS_TR

    key_public, _, _ = key._esapi.read_public(key._key)
    if _public_point(key_public) != key.public_key:
        raise TpmKeyMismatchError(f"the TPM's key at {key.handle:#x} is not the key {key.kid.hex()}")
    attest, signature = key._esapi.certify(key._key, ak, TPM2B_DATA(qualifying_data), ecdsa_sha256_scheme(),
                                           session1=ESYS_TR.PASSWORD, session2=ESYS_TR.PASSWORD)
    return key_public, attest, signature


def attest_tpm_key(key: TpmKey, qualifying_data: bytes) -> dict[str, bytes] | None:
    """The TPM's evidence that `key` lives in it: the EK certificate, the attestation key's and the device key's
    TPM2B_PUBLIC, and TPM2_Certify of the device key by the attestation key over `qualifying_data` (TPMS_ATTEST,
    TPMT_SIGNATURE), all as bytes (telemetry.enrollment.TpmAttestation's fields); None when the TPM has no EK
    certificate to show (then the key can only be enrolled as `software`). Uses `key`'s own TPM connection."""
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.utils import NoSuchIndex

    esapi = key._esapi
    try:
        try:
            certificate = _nv_reader(esapi)(EK_CERTIFICATE_NV_INDEX)
        except NoSuchIndex:
            return None
        ek, ak, ak_public = _endorsement_keys(esapi)
        try:
            key_public, attest, signature = _certify(key, ak, qualifying_data)
        finally:
            esapi.flush_context(ak)
            esapi.flush_context(ek)
        return {"ek_certificate": certificate, "ak_public": ak_public.marshal(), "key_public": key_public.marshal(),
                "certify_info": bytes(attest), "signature": signature.marshal()}
    except TSS2_Exception as exc:
        raise tpm_error(exc, "certify the device key") from exc


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
        raise tpm_error(exc, "activate the lender's credential") from exc


def certify_tpm_key(key: TpmKey, qualifying_data: bytes) -> tuple[bytes, bytes, bytes]:
    """TPM2_Certify of `key` by this TPM's attestation key (re-derived: the one enrollment proved) over
    `qualifying_data`: (the key's TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE), as bytes. What a TPM gateway puts in
    a key handover (telemetry.rotation `key.next.certify`) so the lender knows the new key is in the same TPM.
    Uses `key`'s own TPM connection; no EK certificate is needed (the lender checked it at enrollment)."""
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR

    esapi = key._esapi
    try:
        ak, _, *_ = esapi.create_primary(None, ak_template(), ESYS_TR.ENDORSEMENT)
        try:
            key_public, attest, signature = _certify(key, ak, qualifying_data)
        finally:
            esapi.flush_context(ak)
        return key_public.marshal(), bytes(attest), signature.marshal()
    except TSS2_Exception as exc:
        raise tpm_error(exc, "certify the new key") from exc


def attestation_key_point(key: TpmKey) -> bytes:
    """The 65-byte P-256 point of the attestation key of `key`'s TPM (re-derived): what its enrollment proves."""
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR

    try:
        ak, ak_public, *_ = key._esapi.create_primary(None, ak_template(), ESYS_TR.ENDORSEMENT)
        key._esapi.flush_context(ak)
    except TSS2_Exception as exc:
        raise tpm_error(exc, "derive the attestation key") from exc
    return _public_point(ak_public)
