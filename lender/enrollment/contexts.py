"""The lender's OSCORE contexts: one per enrolled device under a contexts root, and its CoAP server's view of them.

One context pair per device, created at enrollment: a fresh master secret
and salt, the lender's sender id (empty) and the device's sender id (a short
integer unique among this lender's devices). Each side is a context directory
as `durable.oscore` writes, opens and closes it (the files, and what survives
a restart, are described there). The lender's side lives at
``<contexts root>/<device id>/``; the device's side wherever provisioning
puts it. `LenderCredentials` holds the loaded contexts as the ``CredentialsMap``
of the lender's aiocoap server, and `protected_site` refuses plain CoAP.

Errors of `durable.oscore` leave this module as the lender's classes of the
same name (`lender.exc.OscoreContext*Error`, which subclass durable's).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from aiocoap import error as coap_error
from aiocoap import interfaces
from aiocoap import oscore as aiocoap_oscore
from aiocoap.numbers.types import CON
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiocoap.transports.oscore import OSCOREAddress

from durable import exc as durable_exc
from durable.oscore import (
    ContextParameters,
    DurableSecurityContext,
    close_context,
    open_context,
    read_parameters,
    write_context,
)
from lender.coap.routing import Wrapper
from lender.exc import (
    OscoreContextError,
    OscoreContextExistsError,
    OscoreContextInUseError,
    OscoreContextInvalidError,
    OscoreContextPermissionError,
)

log = logging.getLogger(__name__)

LENDER_SENDER_ID = b""  # one per context, so the lender needs no distinct id per device
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ALLOCATION_LOCK = ".allocate.lock"


# --- durable's errors under the lender's names ---------------------------------

_LENDER_NAMES = (
    (durable_exc.OscoreContextExistsError, OscoreContextExistsError),
    (durable_exc.OscoreContextPermissionError, OscoreContextPermissionError),
    (durable_exc.OscoreContextInvalidError, OscoreContextInvalidError),
    (durable_exc.OscoreContextInUseError, OscoreContextInUseError),
)


@contextlib.contextmanager
def _lender_errors() -> Iterator[None]:
    """Re-raise an error of `durable.oscore` as the lender's class of the same name."""
    try:
        yield
    except OscoreContextError:
        raise
    except durable_exc.OscoreContextError as exc:
        ours = next((lender for durable, lender in _LENDER_NAMES if isinstance(exc, durable)), OscoreContextError)
        raise ours(*exc.args) from exc


# --- enrollment --------------------------------------------------------------

def check_device_id(device_id: str) -> str:
    """A device id names a directory: letters, digits, dot, dash, underscore; 1..64; no leading dot."""
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise OscoreContextInvalidError(
            f"device id {device_id!r} cannot name an OSCORE context: use 1..64 of A-Z a-z 0-9 . _ - "
            "(not starting with . _ or -)"
        )
    return device_id


@contextlib.contextmanager
def _allocation_lock(root: Path) -> Iterator[None]:
    fd = os.open(root / _ALLOCATION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _id_bytes(number: int) -> bytes:
    return number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")


def _used_device_ids(root: Path) -> set[bytes]:
    used = set()
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        with contextlib.suppress(durable_exc.OscoreContextInvalidError):
            used.add(read_parameters(entry).recipient_id)
    return used


def new_device_context(contexts_root: str | os.PathLike, device_id: str) -> ContextParameters:
    """Create the lender's side of a new context for `device_id`; return the device's side to deliver.

    The device's OSCORE sender id is the smallest positive integer (1, 2, ...,
    big-endian, shortest) not used by another context under the root, so
    it costs one byte on air per request for the first 255 devices.
    """
    check_device_id(device_id)
    root = Path(contexts_root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _allocation_lock(root):
        if os.path.lexists(root / device_id):
            raise OscoreContextExistsError(
                f"device {device_id} already has an OSCORE context at {root / device_id}; revoke it first"
            )
        used = _used_device_ids(root)
        number = 1
        while _id_bytes(number) in used:
            number += 1
        lender_side = ContextParameters.generate(LENDER_SENDER_ID, _id_bytes(number))
        with _lender_errors():
            write_context(root / device_id, lender_side)
    return lender_side.for_peer()


def create_context_pair(
    contexts_root: str | os.PathLike, device_id: str, device_directory: str | os.PathLike
) -> ContextParameters:
    """Enroll one device end to end: the lender's side under the root, the device's side at `device_directory`.

    Returns the device's parameters. If the device's side cannot be written
    the lender's side is removed again (it was never used), so no device is
    left half-provisioned.
    """
    device_directory = Path(device_directory)
    if os.path.lexists(device_directory):
        raise OscoreContextExistsError(f"OSCORE context {device_directory} already exists; refusing to overwrite it")
    device_side = new_device_context(contexts_root, device_id)
    try:
        with _lender_errors():
            write_context(device_directory, device_side)
    except BaseException:
        shutil.rmtree(Path(contexts_root) / device_id, ignore_errors=True)
        raise
    return device_side


# --- the server's credentials ------------------------------------------------

class LenderCredentials:
    """The lender's loaded contexts, one per enrolled device, as the CredentialsMap its aiocoap server uses."""

    def __init__(self, contexts_root: str | os.PathLike) -> None:
        self.root = Path(contexts_root)
        self.map = CredentialsMap()
        self._contexts: dict[str, DurableSecurityContext] = {}

    @classmethod
    def load(cls, contexts_root: str | os.PathLike) -> LenderCredentials:
        """Load every device context under the root. A broken one is logged and skipped, never fatal."""
        credentials = cls(contexts_root)
        credentials.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in sorted(credentials.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                credentials.add(entry.name)
            except OscoreContextError as exc:
                log.error("OSCORE context of device %s not loaded, its requests will be refused: %s", entry.name, exc)
        return credentials

    def add(self, device_id: str) -> None:
        """Start accepting `device_id` (its context was just written under the root)."""
        check_device_id(device_id)
        if device_id in self._contexts:
            return
        with _lender_errors():
            context = open_context(self.root / device_id)
        context.device_id = device_id
        context.authenticated_claims = [f"device:{device_id}"]
        self._contexts[device_id] = context
        self.map[f":device:{device_id}"] = context

    def remove(self, device_id: str) -> None:
        """Stop accepting `device_id` (revocation); its directory stays on disk as a record."""
        context = self._contexts.pop(device_id, None)
        self.map.pop(f":device:{device_id}", None)
        if context is not None:
            close_context(context)

    def device_of(self, request) -> str | None:
        """The device whose OSCORE context protected `request`, or None for a plain CoAP request."""
        remote = getattr(request, "remote", None)
        if isinstance(remote, OSCOREAddress):
            return getattr(remote.security_context, "device_id", None)
        return None

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._contexts

    def __len__(self) -> int:
        return len(self._contexts)

    def close(self) -> None:
        """Persist every context's exact state and release the locks (clean shutdown)."""
        for device_id in list(self._contexts):
            self.remove(device_id)


class _OscoreRequired(Wrapper):
    """Refuses every request that did not arrive OSCORE-protected (aiocoap's wrapper passes them through)."""

    async def render_to_pipe(self, pipe) -> None:
        if not isinstance(pipe.request.remote, OSCOREAddress):
            raise coap_error.Unauthorized("OSCORE required")
        await self.inner.render_to_pipe(pipe)


class _MalformedOscoreRefused(Wrapper):
    """A request whose OSCORE option cannot be decoded gets 4.02 Bad Option (RFC 8613 §8.2), as aiocoap answers
    one that fails later. aiocoap's wrapper lets that decoder's errors out (a DecodeError, an IndexError on some
    options): each would be a 5.00 and an ERROR with a traceback in the log, per datagram anyone sends."""

    async def render_to_pipe(self, pipe) -> None:
        request = pipe.request
        if request.opt.oscore is not None:
            try:
                aiocoap_oscore.verify_start(request)
            except aiocoap_oscore.NotAProtectedMessage:
                pass
            except Exception:
                if request.mtype == CON:
                    raise coap_error.BadOption("the OSCORE option cannot be decoded") from None
                return  # a NON request: nothing to answer
        await self.inner.render_to_pipe(pipe)


def protected_site(site: interfaces.Resource, credentials: LenderCredentials, *, insecure: bool = False):
    """The resource tree to serve: OSCORE-protected, and plain CoAP refused with 4.01 unless `insecure`.

    aiocoap's ``OscoreSiteWrapper`` alone enforces nothing: a request without
    the OSCORE option goes straight to the inner site. Resources learn the
    sending device from `LenderCredentials.device_of(request)`.
    """
    if insecure:
        log.warning(
            "insecure = true: plain CoAP requests are accepted without OSCORE; anyone on the path can read, "
            "alter or inject telemetry requests (envelope signatures are still checked)"
        )
        return _MalformedOscoreRefused(OscoreSiteWrapper(site, credentials.map))
    return _MalformedOscoreRefused(OscoreSiteWrapper(_OscoreRequired(site), credentials.map))
