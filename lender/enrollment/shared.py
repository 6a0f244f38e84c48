"""The lender's OSCORE contexts shared by several workers: each device's state in the PostgreSQL store, any worker serves it.

OSCORE has no connection id, and a gateway behind a NAT changes source port
whenever the NAT forgets it: with several workers on one port (the kernel's
SO_REUSEPORT group hashes each source address to one socket) or behind a UDP
load balancer, the next request of a device may reach any worker. So no
worker owns a device; the state that must never be lost or duplicated is in
the database (lender.evidence.postgres.OscoreStateTable), changed only by one
atomic statement per request:

* a request's Partial IV is accepted once across all workers
  (`SharedReplayWindow.strike_out` after the request decrypted), so a
  request replayed to another worker, or retransmitted to a new one after
  the first was killed, is refused — and since a response reuses the
  request's nonce only for a request accepted once, no nonce is reused;
* the lender's own sender sequence numbers (for responses that cannot reuse
  the request's nonce: the 4.01 + Echo of an unknown window, and after) come
  in blocks reserved per worker, never shared;
* the Echo value (RFC 9175) a worker asks for is derived from the context's
  secret and the database's epoch, so every worker asks for the same one and
  accepts the answer whichever worker it reaches: no 4.01 loop when a device
  moves between workers while its window is being recovered.

A device whose source address changes lands on another worker, which reads
the same row: it is served at once, with no Echo and no 4.01.

Contexts are still created on disk by registration and enrollment
(lender.enrollment.contexts, ``DATA/oscore/<device>/``); the first worker or
command that finds one not yet in the database moves it there
(`adopt_directory`) and retires the directory: its sequence file is set far
past every number the database will hand out and its window to unknown, so a
lender started on that directory again by mistake can reuse no nonce.
`SharedCredentials` is what `LenderServer` serves from with a PostgreSQL
store, in place of `LenderCredentials`.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path

import filelock
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore import (
    COSE_KID,
    COSE_KID_CONTEXT,
    MAX_SEQNO,
    CanProtect,
    CanUnprotect,
    ContextUnavailable,
    ReplayError,
    SecurityContextUtils,
    algorithms,
    hashfunctions,
)
from durable.files import atomic_write
from durable.oscore import ALGORITHM, KDF_HASH, SEQUENCE_FILE, read_parameters
from lender.coap.resource import StorageUnavailable
from lender.enrollment.contexts import LenderCredentials
from lender.evidence.postgres import OscoreRow, OscoreStateTable
from lender.exc import OscoreContextError, OscoreContextInUseError, StoreError

log = logging.getLogger(__name__)

SENDER_BLOCK = 32          # sender sequence numbers a worker reserves at a time
RETIRE_GAP = 1 << 30       # how far a retired directory's next number is set past the database's first
MOVED_MARK = "moved-to"    # key in a retired directory's sequence file
MISS_HOLD = 1.0            # seconds before a kid found in no row is looked up again
MISSES_KEPT = 10_000


class _WindowUnknown(Exception):
    """The device's window does not belong to this database epoch (the server restarted): recover with Echo."""


class SharedReplayWindow:
    """aiocoap's replay-window interface over the device's row: the strike after decryption decides, atomically."""

    def __init__(self, table: OscoreStateTable, device: str) -> None:
        self._table = table
        self._device = device
        self.unknown = False   # this worker saw the window unknown, and has not seen it restarted since

    def is_initialized(self) -> bool:
        if self.unknown:
            self.unknown = not self._state(self._table.window_known)()
        return not self.unknown

    def is_valid(self, number: int) -> bool:
        return True  # checked, with the row locked, by strike_out once the request decrypted

    def strike_out(self, number: int) -> None:
        outcome = self._state(self._table.strike)(number)
        if outcome == "unknown":
            raise _WindowUnknown()
        if outcome != "ok":
            raise ReplayError(f"Sequence number {number} was used already" if outcome == "replay"
                              else f"no OSCORE context of {self._device} in the database")

    def initialize_from_freshlyseen(self, number: int) -> None:
        if self._state(self._table.restart_window)(number) != "ok":
            raise ReplayError(f"Sequence number {number} was used already")
        self.unknown = False

    def _state(self, method):
        """`method` bound to this device; the database being down becomes a 5.03 with Max-Age."""
        def call(*args):
            try:
                return method(self._device, *args)
            except StoreError as exc:
                log.error("OSCORE request of %s answered 5.03: %s", self._device, exc)
                raise StorageUnavailable() from exc
        return call


class SharedSecurityContext(CanProtect, CanUnprotect, SecurityContextUtils):
    """The lender's side of one device's context, its mutable state in the database (see the module docstring)."""

    def __init__(self, table: OscoreStateTable, row: OscoreRow) -> None:
        self._table = table
        self.device_id = row.device
        self.authenticated_claims = [f"device:{row.device}"]
        self.sender_id = row.sender_id
        self.recipient_id = row.recipient_id
        self.id_context = None
        self.alg_aead = algorithms[row.algorithm]
        self.hashfun = hashfunctions[row.kdf]
        self.derive_keys(row.master_salt, row.master_secret)
        self._echo_key = hmac.new(row.master_secret, b"pledgewatch lender echo", hashlib.sha256).digest()
        self.recipient_replay_window = SharedReplayWindow(table, row.device)
        self.sender_sequence_number = 0
        self._block_end = 0

    def __repr__(self) -> str:
        return f"<SharedSecurityContext of {self.device_id}>"

    @property
    def echo_recovery(self) -> bytes:
        """The Echo value every worker asks for in this database epoch (fresh after each server restart)."""
        return hmac.new(self._echo_key, self._table.epoch.encode(), hashlib.sha256).digest()[:8]

    def new_sequence_number(self) -> int:
        if self.sender_sequence_number >= self._block_end:
            try:
                first = self._table.reserve(self.device_id, SENDER_BLOCK)
            except StoreError as exc:
                raise ContextUnavailable(f"no sender sequence numbers for {self.device_id}: {exc}") from exc
            self.sender_sequence_number, self._block_end = first, first + SENDER_BLOCK
        number = self.sender_sequence_number
        if number >= MAX_SEQNO:
            raise ContextUnavailable("Sequence number too large, context is exhausted.")
        self.sender_sequence_number += 1
        return number

    def post_seqnoincrease(self) -> None:
        pass  # reserved in the database before use (new_sequence_number)

    def unprotect(self, protected_message, request_id=None):
        try:
            return super().unprotect(protected_message, request_id)
        except _WindowUnknown:
            # the database restarted since the window was kept: treat it as unknown, which answers 4.01 + Echo
            # (or takes a request that carries the right Echo as the window's new start)
            self.recipient_replay_window.unknown = True
            return super().unprotect(protected_message, request_id)


class _Index(CredentialsMap):
    """aiocoap's credentials map, finding a request's context by its kid in one dict look-up, not a scan.

    A kid it does not know is looked up in the database (`lookup`): a device
    registered a moment ago on another host is served at once, without
    waiting for the registry poll.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_kid: dict[bytes, SharedSecurityContext] = {}
        self.lookup = lambda kid: None

    def find_oscore(self, unprotected):
        kid = unprotected.get(COSE_KID)
        context = self.by_kid.get(kid)
        if context is None and isinstance(kid, bytes):
            context = self.lookup(kid)
        if context is None or unprotected.get(COSE_KID_CONTEXT) != context.id_context:
            raise KeyError("no OSCORE context for this kid")
        return context


def adopt_directory(table: OscoreStateTable, device_id: str, directory: Path) -> bool:
    """Move the lender's side of a context written on disk into the database, and retire the directory.

    The database starts the lender's sender numbers at the directory's
    reservation (above every number used from it); the directory's sequence
    file is then set `RETIRE_GAP` past that, with its window unknown. Refused
    while a process (a lender on that directory) holds the context. Returns
    whether this call added the row (False: it was there already).
    """
    params = read_parameters(directory)
    lock = filelock.FileLock(os.fspath(directory / "lock"))
    try:
        lock.acquire(timeout=0.001)
    except filelock.Timeout as exc:
        raise OscoreContextInUseError(f"OSCORE context {directory} is in use by another process; stop the lender "
                                      "serving that directory before its devices move to the shared store") from exc
    try:
        sequence_path = directory / SEQUENCE_FILE
        try:
            sequence = json.loads(sequence_path.read_text("ascii"))
        except FileNotFoundError:
            sequence = {}
        except (OSError, ValueError) as exc:
            raise OscoreContextError(f"OSCORE context {directory}: {SEQUENCE_FILE} cannot be read: {exc}") from exc
        reserved = int(sequence.get("next-to-send", 0))
        added = table.add(OscoreRow(device_id, params.sender_id, params.recipient_id, params.master_secret,
                                    params.master_salt, ALGORITHM, KDF_HASH), reserved)
        if not sequence.get(MOVED_MARK):
            retired = {"next-to-send": reserved + RETIRE_GAP, "received": "unknown", MOVED_MARK: "postgresql"}
            atomic_write(sequence_path, json.dumps(retired).encode("ascii") + b"\n", 0o600)
    finally:
        lock.release()
    if added:
        log.info("OSCORE context of %s moved from %s to the shared store", device_id, directory)
    return added


class SharedCredentials:
    """The contexts of every device with one in the database, as the CredentialsMap of a worker's aiocoap server.

    The same face as `lender.enrollment.contexts.LenderCredentials` (map, add,
    remove, device_of, close), over `OscoreStateTable`.
    """

    def __init__(self, table: OscoreStateTable, contexts_root: str | os.PathLike) -> None:
        self.table = table
        self.root = Path(contexts_root)
        self.map = _Index()
        self.map.lookup = self._unknown_kid
        self._contexts: dict[str, SharedSecurityContext] = {}
        self._missed: dict[bytes, float] = {}   # kids looked up in vain, and when: at most one read per second each

    @classmethod
    def load(cls, url: str, contexts_root: str | os.PathLike) -> SharedCredentials:
        credentials = cls(OscoreStateTable(url), contexts_root)
        for row in credentials.table.rows():
            credentials._install(row)
        return credentials

    def add(self, device_id: str) -> None:
        """Serve `device_id`: its row, adopted first from ``DATA/oscore/<device>`` on this host if it is not there."""
        if device_id in self._contexts:
            return
        try:
            row = self.table.row(device_id)
            if row is None:
                directory = self.root / device_id
                if not directory.is_dir():
                    raise OscoreContextError(f"device {device_id} has no OSCORE context in the shared store, nor at "
                                             f"{directory} on this host (run `lender migrate` where it was made)")
                adopt_directory(self.table, device_id, directory)
                row = self.table.row(device_id)
        except StoreError as exc:
            raise OscoreContextError(f"device {device_id}: the shared OSCORE state is unavailable: {exc}") from exc
        self._install(row)

    def _unknown_kid(self, kid: bytes) -> SharedSecurityContext | None:
        now = time.monotonic()
        if now - self._missed.get(kid, -MISS_HOLD) < MISS_HOLD:
            return None
        try:
            row = self.table.row_by_kid(kid)
            if row is None:  # registered here a moment ago (enrollment, register): its context is still on disk
                device = self.table.device_with_oscore_id(kid)
                if device is not None and (self.root / device).is_dir():
                    adopt_directory(self.table, device, self.root / device)
                    row = self.table.row(device)
        except (StoreError, OscoreContextError) as exc:
            log.error("OSCORE request with an unknown kid %s: %s", kid.hex(), exc)
            row = None
        if row is None:
            if len(self._missed) >= MISSES_KEPT:
                self._missed.clear()
            self._missed[kid] = now
            return None
        return self._install(row)

    def _install(self, row: OscoreRow) -> SharedSecurityContext:
        context = SharedSecurityContext(self.table, row)
        self._contexts[row.device] = context
        self.map[f":device:{row.device}"] = context
        self.map.by_kid[row.recipient_id] = context
        return context

    def remove(self, device_id: str) -> None:
        context = self._contexts.pop(device_id, None)
        self.map.pop(f":device:{device_id}", None)
        if context is not None:
            self.map.by_kid.pop(context.recipient_id, None)

    device_of = LenderCredentials.device_of  # the device whose context protected a request (None: plain CoAP)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._contexts

    def __len__(self) -> int:
        return len(self._contexts)

    def close(self) -> None:
        """Nothing to write back (every change is in the database already); release the connection."""
        self._contexts.clear()
        self.map.clear()
        self.map.by_kid.clear()
        self.table.close()
