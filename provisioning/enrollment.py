"""Enrollment from the device's side: send a signed request to the lender, or keep it for later; open the answer.

The format and its reasons are in telemetry.enrollment (the lender checks what this
module builds). Here:

* `send` POSTs a request to ``<lender>/enroll`` over plain CoAP (aiocoap)
  and returns the lender's signed response, or raises
  `LenderUnreachableError` (no answer: the caller keeps the request for
  ``pledgewatch provision submit``) or `EnrollmentRejectedError` (the lender
  said no, with its one-line reason);
* `PendingEnrollment` is a request waiting for the lender, on the device:
  ``enrollment/request.cbor`` and ``enrollment/response.key`` (the X25519
  private key the response is sealed to), both 0600;
* `accept` checks a response against the pinned lender key and the request
  it answers, and opens the sealed OSCORE context with the response key.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiocoap
import nacl.public
from aiocoap import error as coap_error
from aiocoap.numbers import codes
from aiocoap.numbers.constants import TransportTuning

from durable import oscore
from durable.exc import KeyFileError, OscoreContextError
from durable.keyfile import read_key
from provisioning.exc import (
    EnrollmentFileError,
    EnrollmentRejectedError,
    EnrollmentResponseError,
    LenderUnreachableError,
)
from provisioning.install import write_file
from telemetry import cbor
from telemetry.cbor import Limits, Tag
from telemetry.enrollment import EnrollmentRequest, EnrollmentResponse
from telemetry.exc import EnrollmentFormatError, WireFormatError
from telemetry.numbers import PATH_ENROLL, PATH_INSTALLATIONS

REQUEST_FILE = "request.cbor"
RESPONSE_KEY_FILE = "response.key"
DEFAULT_TIMEOUT = 20.0


def _tuning() -> TransportTuning:
    tuning = TransportTuning()
    tuning.ACK_TIMEOUT = 1.0   # a technician waits: fail over to "saved for submit" within seconds
    tuning.MAX_RETRANSMIT = 3
    return tuning


async def post(lender: str, path: tuple[str, ...], body: bytes, *, timeout: float = DEFAULT_TIMEOUT) -> aiocoap.Message:
    """One confirmable POST over plain CoAP; `LenderUnreachableError` when there is no answer."""
    uri = lender.rstrip("/") + "/" + "/".join(path)
    context = await aiocoap.Context.create_client_context()
    try:
        request = aiocoap.Message(code=codes.POST, uri=uri, payload=body, content_format=60,
                                  transport_tuning=_tuning())
        try:
            return await asyncio.wait_for(context.request(request).response, timeout)
        except (coap_error.Error, OSError, asyncio.TimeoutError) as exc:
            raise LenderUnreachableError(f"no answer from the lender at {lender} ({type(exc).__name__}: "
                                         f"{exc or 'timed out'})") from exc
    finally:
        await context.shutdown()


async def get(lender: str, path: tuple[str, ...], *, timeout: float = DEFAULT_TIMEOUT) -> aiocoap.Message:
    """One confirmable GET over plain CoAP (Block2 handled by aiocoap); `LenderUnreachableError` when no answer."""
    uri = lender.rstrip("/") + "/" + "/".join(path)
    context = await aiocoap.Context.create_client_context()
    try:
        request = aiocoap.Message(code=codes.GET, uri=uri, transport_tuning=_tuning())
        try:
            return await asyncio.wait_for(context.request(request).response, timeout)
        except (coap_error.Error, OSError, asyncio.TimeoutError) as exc:
            raise LenderUnreachableError(f"no answer from the lender at {lender} ({type(exc).__name__}: "
                                         f"{exc or 'timed out'})") from exc
    finally:
        await context.shutdown()


def _refusal(response: aiocoap.Message, what: str) -> EnrollmentRejectedError:
    text = response.payload.decode("utf-8", "replace").strip() or "no reason given"
    return EnrollmentRejectedError(f"the lender refused the {what} ({response.code.dotted}): {text}")


async def send(lender: str, request: EnrollmentRequest, *, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """The lender's signed response to `request` (see the module docstring for the errors)."""
    response = await post(lender, PATH_ENROLL, request.encode(), timeout=timeout)
    if response.code != codes.CREATED:
        raise _refusal(response, "enrollment")
    return response.payload


async def send_report(lender: str, signed_report: bytes, *, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Store a signed installation report at the lender; returns the lender's receipt text."""
    response = await post(lender, PATH_INSTALLATIONS, signed_report, timeout=timeout)
    if response.code != codes.CREATED:
        raise _refusal(response, "installation report")
    return response.payload.decode("utf-8", "replace")


def accept(response: bytes, request: EnrollmentRequest, lender_key: bytes,
           response_private: nacl.public.PrivateKey | None, *, open_sealed: bool = True,
           activate: Callable[[bytes, bytes], bytes] | None = None,
           ) -> tuple[EnrollmentResponse, oscore.ContextParameters | None]:
    """Check the lender's response to `request` and open the OSCORE context sealed in it.

    With `open_sealed` False (a laptop relaying a gateway's request) only the
    signature and the request digest are checked; the context stays sealed.
    An attested request's answer carries a credential: `activate` (the TPM's
    TPM2_ActivateCredential, durable.keystore) recovers the secret the context
    is also encrypted under.
    """
    try:
        answer = EnrollmentResponse.verify(response, lender_key)
    except EnrollmentFormatError as exc:
        raise EnrollmentResponseError(f"the enrollment response is not from the pinned lender key "
                                      f"({exc}); check [lender] enroll_key in the technician profile") from exc
    if answer.device != request.body.device or answer.request_digest != request.digest:
        raise EnrollmentResponseError(f"the enrollment response answers another request (device {answer.device}); "
                                      "submit this device's own request")
    context = None
    if answer.sealed_context is not None and open_sealed:
        if response_private is None:
            raise EnrollmentResponseError("the response holds an OSCORE context but this machine does not have the "
                                          "device's response key: install it on the gateway itself")
        secret = None
        if answer.credential is not None:
            if activate is None:
                raise EnrollmentResponseError("the lender's answer is for a TPM-attested key: install it on the "
                                              "gateway whose TPM made the request")
            secret = activate(*answer.credential)
        try:
            context = oscore.ContextParameters.open(answer.sealed_context, response_private, secret)
        except (EnrollmentFormatError, OscoreContextError) as exc:
            raise EnrollmentResponseError(str(exc)) from exc
    elif answer.sealed_context is None and request.body.response_key is not None:
        raise EnrollmentResponseError("the lender enrolled the device without the OSCORE context it asked for")
    return answer, context


def kind_of_file(data: bytes) -> str:
    """'request' (COSE_Sign) or 'response' (COSE_Sign1), by the CBOR tag; EnrollmentFileError otherwise."""
    try:
        item = cbor.decode(data, Limits(max_bytes=16384, max_depth=6, max_items=512))
    except WireFormatError as exc:
        raise EnrollmentFileError(f"not an enrollment file (not CBOR: {exc})") from exc
    if isinstance(item, Tag) and item.number == 98:
        return "request"
    if isinstance(item, Tag) and item.number == 18:
        return "response"
    raise EnrollmentFileError("not an enrollment request or response (expected CBOR tag 98 or 18)")


def read_request(path: Path) -> EnrollmentRequest:
    try:
        return EnrollmentRequest.decode(path.read_bytes())
    except OSError as exc:
        raise EnrollmentFileError(f"cannot read {path}: {exc.strerror}") from exc
    except EnrollmentFormatError as exc:
        raise EnrollmentFileError(f"{path} is not an enrollment request: {exc}") from exc


@dataclass(frozen=True, slots=True)
class PendingEnrollment:
    """A request kept on the device until the lender answers (see the module docstring)."""

    directory: Path

    @property
    def request_file(self) -> Path:
        return self.directory / REQUEST_FILE

    @property
    def key_file(self) -> Path:
        return self.directory / RESPONSE_KEY_FILE

    def exists(self) -> bool:
        return self.request_file.exists()

    def save(self, request: EnrollmentRequest, response_private: nacl.public.PrivateKey | None) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if response_private is not None:
            write_file(self.key_file, bytes(response_private), 0o600)
        write_file(self.request_file, request.encode(), 0o600)

    def update(self, request: EnrollmentRequest) -> None:
        write_file(self.request_file, request.encode(), 0o600)

    def load(self) -> tuple[EnrollmentRequest, nacl.public.PrivateKey | None]:
        request = read_request(self.request_file)
        key = None
        if self.key_file.exists():
            try:
                key = nacl.public.PrivateKey(read_key(self.key_file))  # refused if others can read it
            except KeyFileError as exc:
                raise EnrollmentFileError(f"response key: {exc}") from exc
            if bytes(key.public_key) != request.body.response_key:
                raise EnrollmentFileError(f"{self.key_file} does not belong to {self.request_file}")
        return request, key

    def clear(self) -> None:
        for path in (self.key_file, self.request_file):
            path.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass
