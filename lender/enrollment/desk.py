"""The enrollment desk: the lender's decisions on enrollment requests, site files and installation reports.

Pure of CoAP: each decision takes the bytes of one message (telemetry.enrollment)
and returns a `Decision` (a CoAP code and the payload to send); lender.coap.enroll
serves them, in the store's thread. What the desk checks: both signatures
(the device's proof of possession, a registered and active technician's
countersignature), the request's age, that neither the device id nor its key
is registered already. What it records: the device in the registry with a
fresh OSCORE context (lender.enrollment.contexts), the request, and the signed
response, so the exact same request again gets the exact same answer.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiocoap
from aiocoap.numbers import codes

from durable.files import atomic_write
from lender.enrollment import attestation
from lender.enrollment import contexts as oscore
from lender.enrollment.technicians import TechnicianRegistry, enroll_dir
from lender.evidence.log import lender_identity
from lender.evidence.registry import Device, KeyStorage, check_device_id, iso_time
from lender.exc import DeviceExistsError
from telemetry import cose
from telemetry.enrollment import (
    MAX_SITE,
    REPORT_AAD,
    REPORT_LIMITS,
    REQUEST_AAD,
    SITE_AAD,
    EnrollmentRequest,
    EnrollmentResponse,
    InstallationReport,
    SiteRequest,
    binding_of,
    seal_site,
    signer_verifies,
)
from telemetry.exc import EnrollmentFormatError, WireFormatError
from telemetry.identity import algorithm_of
from telemetry.numbers import ALG_EDDSA
from telemetry.logentry import EnrollmentEvidence

log = logging.getLogger(__name__)

MAX_AGE_S = 30 * 86400      # a request carried around offline is accepted for 30 days
MAX_FUTURE_S = 86400        # and up to a day "from the future" (a gateway clock before its first sync)
MAX_SITE_REQUEST_AGE_S = 86400  # a site request is made at the site, online: a day either way covers a laptop's clock


@dataclass(frozen=True, slots=True)
class Decision:
    """What to send back: a CoAP code and a payload (the signed response, or a one-line reason)."""

    code: aiocoap.numbers.codes.Code
    payload: bytes
    device: str | None = None
    signed: bool = False  # the payload is CBOR (a signed response), not a text reason

    @property
    def text(self) -> str:
        return "" if self.signed else self.payload.decode("utf-8", "replace")


def _refuse(code, text: str) -> Decision:
    return Decision(code, text.encode("utf-8"))


class EnrollmentDesk:
    """Checks enrollment requests and installation reports against the registries, and records them."""

    def __init__(self, data_dir: str | os.PathLike, registry, *, clock: Callable[[], float] = time.time,
                 require_hardware_key: bool | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.registry = registry
        self.technicians = TechnicianRegistry(data_dir)
        self.identity = lender_identity(data_dir)
        self.clock = clock
        self._require_hardware_key = require_hardware_key

    @property
    def require_hardware_key(self) -> bool:
        """Whether only TPM-attested keys are enrolled: the argument, else `require_hardware_key` in
        ``DATA/enroll/policy.toml`` (read at each request, so a change needs no restart)."""
        if self._require_hardware_key is not None:
            return self._require_hardware_key
        return enrollment_policy(self.data_dir).get("require_hardware_key", False) is True

    def _responses(self) -> Path:
        return enroll_dir(self.data_dir) / "responses"

    def _technician_checked(self, technician_id: str, kid: bytes | None, signature: bytes | None, payload: bytes,
                            aad: bytes) -> Decision | None:
        technician = self.technicians.get(technician_id)
        if technician is None:
            return _refuse(codes.FORBIDDEN, f"technician {technician_id} is not registered at this lender "
                                            "(pledgewatch lender technicians add)")
        if not technician.active:
            return _refuse(codes.FORBIDDEN, f"technician {technician_id} was revoked at "
                                            f"{iso_time(technician.revoked_at)}")
        if signature is None:
            return _refuse(codes.UNAUTHORIZED, "the request is not countersigned by a technician "
                                               "(pledgewatch provision submit countersigns it)")
        if kid != technician.kid or not signer_verifies(technician.public_key, payload, signature, aad):
            return _refuse(codes.UNAUTHORIZED, f"the technician signature does not verify with the key registered "
                                               f"for technician {technician_id} (kid {technician.kid.hex()})")
        return None

    def enroll(self, data: bytes) -> Decision:
        """Decide on one enrollment request (the bytes of a COSE_Sign)."""
        try:
            request = EnrollmentRequest.decode(data)
        except EnrollmentFormatError as exc:
            return _refuse(codes.BAD_REQUEST, f"not an enrollment request: {exc}")
        body = request.body
        if not request.device_signature_valid():
            return _refuse(codes.UNAUTHORIZED, f"the device signature does not verify with the public key in the "
                                               f"request (device {body.device})")
        refused = self._technician_checked(body.technician, request.technician_kid, request.technician_signature,
                                           request.payload, REQUEST_AAD)
        if refused is not None:
            return refused
        saved = self._responses() / f"{body.device}.cbor"
        existing = self.registry.device(body.device)
        if existing is not None and not existing.active:
            return _refuse(codes.FORBIDDEN, f"device {body.device} was revoked at {iso_time(existing.revoked_at)}; "
                                            "a revoked device is never enrolled again: enroll a replacement")
        if existing is not None:
            if existing.public_key == body.public_key and saved.exists():
                stored = saved.read_bytes()
                answer = EnrollmentResponse.verify(stored, self.identity.public_key)
                if answer.request_digest == request.digest:
                    return Decision(codes.CREATED, stored, body.device, signed=True)  # the same request again: the same answer
            if existing.public_key == body.public_key and body.response_key is None:
                signed = EnrollmentResponse(body.device, request.digest, int(existing.registered_at),
                                            existing.asset or "").sign(self.identity)
                if existing.binding is None:  # registered by hand (a node), enrolled now: bound from here on
                    self.registry.bind(body.device, binding_of(self.identity.public_key, body.public_key,
                                                               existing.asset or ""), self._evidence(request, signed))
                return Decision(codes.CREATED, signed, body.device, signed=True)
            return _refuse(codes.CONFLICT, f"device {body.device} is enrolled already (kid {existing.kid.hex()}, "
                                           f"{existing.status.value}); enroll a replacement under a new device id")
        now = self.clock()
        if body.created < now - MAX_AGE_S or body.created > now + MAX_FUTURE_S:
            return _refuse(codes.FORBIDDEN, f"the request was made at {iso_time(body.created)}, outside the "
                                            f"{MAX_AGE_S // 86400}-day window; make a new one")
        if self.registry.device_by_kid(body.kid) is not None:
            return _refuse(codes.CONFLICT, f"the device key {body.kid.hex()} is registered to another device")
        credential = None
        if body.attestation is not None:
            try:
                credential = attestation.verify(body, attestation.manufacturer_cas(self.data_dir))
            except attestation.AttestationError as exc:
                return _refuse(codes.FORBIDDEN, f"the TPM attestation of {body.device}'s key does not verify: {exc}")
            if body.response_key is None:
                return _refuse(codes.BAD_REQUEST, "an attested request must ask for an OSCORE context (key 9): "
                                                  "the credential protects it")
        elif self.require_hardware_key:
            return _refuse(codes.FORBIDDEN, f"this lender enrolls hardware keys only: {body.device}'s key is not "
                                            "attested by a TPM (provision gateway --key-store tpm, with a TPM "
                                            "whose EK certificate a trusted manufacturer CA signed)")
        asset = body.binding.asset
        if not self.site_path(asset).is_file():
            return _refuse(codes.FORBIDDEN, f"asset {asset} has no site record at this lender; an enrollment must name "
                                            f"a pledged asset the lender holds (staff: {self.site_path(asset)})")
        if body.kind == "gateway":
            first = next((d for d in self.registry.devices()
                          if d.active and d.asset == asset and d.oscore_context is not None), None)
            if first is not None:
                return _refuse(codes.CONFLICT, f"asset {asset} is pledged already, watched by gateway {first.device} "
                                               f"(enrolled {iso_time(first.registered_at)}); revoke it before "
                                               "enrolling another gateway for the asset")
        return self._register(request, now, saved, credential)

    def site_path(self, asset: str) -> Path:
        """Where the lender's staff keep the site record of a pledged asset."""
        return enroll_dir(self.data_dir) / "sites" / f"{asset}.toml"

    def _register(self, request: EnrollmentRequest, now: float, saved: Path,
                  credential: attestation.Credential | None = None) -> Decision:
        body = request.body
        contexts = self.data_dir / "oscore"
        params = None
        try:
            if body.response_key is not None:
                params = oscore.new_device_context(contexts, body.device)
            response = EnrollmentResponse(
                body.device, request.digest, int(now), body.binding.asset,
                params.seal(body.response_key, credential.secret if credential else None) if params is not None
                else None, (credential.id_object, credential.encrypted_secret) if credential else None)
            signed = response.sign(self.identity)
            device = Device(device=body.device, public_key=body.public_key, registered_at=now,
                            asset=body.binding.asset,
                            oscore_context=f"oscore/{body.device}" if params is not None else None,
                            oscore_id=params.sender_id if params is not None else None,
                            binding=binding_of(self.identity.public_key, body.public_key, body.binding.asset),
                            key_storage=KeyStorage.TPM_ATTESTED if credential else KeyStorage.SOFTWARE)
            record = {"request_b64": _b64(request.encode()), "technician": body.technician, "kind": body.kind,
                      "hardware": dict(body.hardware), "binding": body.binding.to_map(), "enrolled_at": iso_time(now),
                      "key_storage": device.key_storage.value}
            if credential is not None:
                record["ek_certificate_sha256"] = attestation.fingerprint(body.attestation.ek_certificate)
                # the key the device's TPM certifies its envelope counter with (lender.evidence.risks, rollback)
                record["attestation_key_hex"] = attestation.attestation_key_point(body.attestation.ak_public).hex()
            requests = enroll_dir(self.data_dir) / "requests"
            for folder in (requests, saved.parent):
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(requests / f"{body.device}.json", json.dumps(record, indent=1).encode())
            atomic_write(saved, signed)
            self.registry.add_device(device, self._evidence(request, signed))
        except DeviceExistsError as exc:
            self._undo(body.device, params is not None, saved)
            return _refuse(codes.CONFLICT, str(exc))
        except BaseException:
            self._undo(body.device, params is not None, saved)
            raise
        log.info("enrolled %s %s (kid %s) for asset %s, countersigned by technician %s", body.kind, body.device,
                 body.kid.hex(), body.binding.asset, body.technician)
        return Decision(codes.CREATED, signed, body.device, signed=True)

    def _evidence(self, request: EnrollmentRequest, response: bytes) -> EnrollmentEvidence:
        """What the lender's log keeps of an enrollment, for a third party to check without the lender."""
        technician = self.technicians.get(request.body.technician)
        return EnrollmentEvidence(request.encode(), response, technician.public_key)

    def _undo(self, device: str, had_context: bool, saved: Path) -> None:
        if had_context:
            shutil.rmtree(self.data_dir / "oscore" / device, ignore_errors=True)
        saved.unlink(missing_ok=True)
        (enroll_dir(self.data_dir) / "requests" / f"{device}.json").unlink(missing_ok=True)

    def site(self, data: bytes) -> Decision:
        """The site file staff keep for the asset a technician's signed `SiteRequest` names
        (``DATA/enroll/sites/<asset>.toml``), signed by the enrollment key and sealed to the request's response
        key: only a registered, active technician gets it, and only they can read it."""
        try:
            request, message = SiteRequest.parse(data)
        except EnrollmentFormatError as exc:
            return _refuse(codes.BAD_REQUEST, f"not a site request: {exc}")
        technician = self.technicians.get(request.technician)
        if technician is None or not technician.active:
            return _refuse(codes.FORBIDDEN, f"technician {request.technician} is not a registered, active technician "
                                            "at this lender: site files go to registered technicians only")
        if not SiteRequest.verify(message, technician.public_key):
            return _refuse(codes.UNAUTHORIZED, f"the site request is not signed with the key registered for "
                                               f"technician {request.technician} (kid {technician.kid.hex()})")
        now = self.clock()
        if not now - MAX_SITE_REQUEST_AGE_S <= request.created <= now + MAX_SITE_REQUEST_AGE_S:
            return _refuse(codes.FORBIDDEN, f"the site request was made at {iso_time(request.created)}, more than a "
                                            "day from the lender's time; make a new one")
        path = self.site_path(request.asset)
        try:
            site = path.read_bytes()
        except FileNotFoundError:
            return _refuse(codes.NOT_FOUND, f"the lender has no site file for asset {request.asset} "
                                            f"(staff: put it in {path.parent}/)")
        if len(site) > MAX_SITE:
            return _refuse(codes.INTERNAL_SERVER_ERROR, f"the site file for {request.asset} is over {MAX_SITE} bytes")
        log.info("site file of %s handed to technician %s (sealed to their request)", request.asset, request.technician)
        return Decision(codes.CONTENT, seal_site(cose.sign1(self.identity, site, SITE_AAD), request.response_key),
                        request.asset)

    def report(self, data: bytes) -> Decision:
        """Check and keep one signed installation report."""
        try:
            payload, signers = cose.parse_sign_signers(data, REPORT_LIMITS)  # a TPM gateway's device signs ES256
            report = InstallationReport.decode(payload)
        except (EnrollmentFormatError, WireFormatError) as exc:
            return _refuse(codes.BAD_REQUEST, f"not an installation report: {exc}")
        if len(signers) == 2 and signers[1][2] != ALG_EDDSA:
            return _refuse(codes.BAD_REQUEST, "not an installation report: a technician countersigns EdDSA")
        signatures = [(kid, signature) for kid, signature, _ in signers]
        device = self.registry.device(report.device)
        if device is None or not device.active:
            return _refuse(codes.FORBIDDEN, f"device {report.device} is not an enrolled, active device")
        if len(signatures) != 2 or signatures[0][0] != device.kid or signers[0][2] != algorithm_of(device.public_key) \
                or not signer_verifies(
                device.public_key, payload, signatures[0][1], REPORT_AAD):
            return _refuse(codes.UNAUTHORIZED, f"the report is not signed by device {report.device}'s registered key")
        refused = self._technician_checked(report.technician, signatures[1][0], signatures[1][1], payload, REPORT_AAD)
        if refused is not None:
            return refused
        name = f"{report.at}-{hashlib.sha256(data).hexdigest()[:12]}.cbor"
        folder = enroll_dir(self.data_dir) / "reports" / report.device
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(folder / name, bytes(data), 0o640)
        verdict = "passed" if report.passed else "FAILED"
        log.info("installation report for %s by %s: %s (%d checks)", report.device, report.technician, verdict,
                 len(report.results))
        return Decision(codes.CREATED, f"report stored as {report.device}/{name}".encode(), report.device)


POLICY_FILE = "policy.toml"


def enrollment_policy(data_dir: str | os.PathLike) -> dict:
    """``DATA/enroll/policy.toml`` (the lender's enrollment policy; empty when there is none):
    ``require_hardware_key = true`` refuses every device key a TPM does not attest."""
    import tomllib
    path = enroll_dir(data_dir) / POLICY_FILE
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as TOML: {exc}") from exc


def recorded_key_storage(data_dir: str | os.PathLike, device: str) -> KeyStorage:
    """How the device's enrollment proved its key's storage (``DATA/enroll/requests/<device>.json``):
    `tpm-attested` when a TPM attestation was checked and its credential issued, `software` otherwise
    (devices registered by hand, enrolled before attestation, or without one)."""
    path = enroll_dir(data_dir) / "requests" / f"{check_device_id(device)}.json"
    try:
        return KeyStorage(json.loads(path.read_text("utf-8")).get("key_storage", "software"))
    except (OSError, ValueError):
        return KeyStorage.SOFTWARE


def with_recorded_key_storage(data_dir: str | os.PathLike, device: Device) -> Device:
    """`device` with the key storage its enrollment record proves (the store keeps no column for it)."""
    import dataclasses
    storage = recorded_key_storage(data_dir, device.device)
    return device if storage is device.key_storage else dataclasses.replace(device, key_storage=storage)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def installation_reports(data_dir: str | os.PathLike, device: str) -> list[tuple[Path, InstallationReport]]:
    """The stored reports of `device`, oldest first (re-read and decoded; their signatures were checked on arrival)."""
    folder = enroll_dir(data_dir) / "reports" / check_device_id(device)
    found = []
    for path in sorted(folder.glob("*.cbor")) if folder.is_dir() else ():
        payload, _ = cose.parse_sign_signers(path.read_bytes(), REPORT_LIMITS)
        found.append((path, InstallationReport.decode(payload)))
    return found
