"""agent.freshness — the newest lender token: taken from each ack, kept on disk, carried by every envelope signed after.

The lender puts a fresh token (telemetry.freshness: its time, MACed for this
device) into every 2.04 ack. The uplink offers each one here; the newest by
the lender time inside it is kept, written atomically to the state directory
(``lender-token``, the 12 bytes, mode 0600) so it survives restarts, and the
recorder puts it into each envelope it signs. Each token is also the
trusted clock's authenticated time reference (agent.clock, source "lender"),
taken at the ack's arrival with the exchange's round trip as its error.

Nothing here checks the token's MAC (the device has no key for it): the
lender checks what comes back. A damaged file is ignored (logged) until the
next ack replaces it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.clock import TrustedClock
from durable.files import atomic_write
from telemetry.freshness import TOKEN_BYTES, check_token_shape, token_time

log = logging.getLogger(__name__)

TOKEN_FILE = "lender-token"


class LenderTokens:
    """The newest lender token the agent holds (None until the first ack brings one). Single-threaded."""

    def __init__(self, path: str | os.PathLike, *, clock: TrustedClock | None = None) -> None:
        self.path = Path(path)
        self._clock = clock
        self.token: bytes | None = self._load()
        if self.token is not None and clock is not None:
            clock.hold_token()  # a device that has heard the lender waits for its time before permitting access

    def _load(self) -> bytes | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("lender token %s cannot be read (%s); envelopes carry none until the next ack", self.path, exc)
            return None
        if len(data) != TOKEN_BYTES:
            log.error("lender token %s is %d bytes, not %d: ignored until the next ack replaces it",
                      self.path, len(data), TOKEN_BYTES)
            return None
        return data

    @property
    def time(self) -> int | None:
        """The lender time inside the token held (Unix seconds), or None."""
        return None if self.token is None else token_time(self.token)

    def offer(self, token: bytes, *, round_trip: float) -> bool:
        """A token from an ack that arrived just now, `round_trip` seconds after its request left.

        Every token is the lender's time now (the ack answers this device's
        own request), so the clock takes each one. The token is kept (and
        persisted) only when its time is later than the one held: True then.
        Envelopes never carry an older token than one they carried before.
        """
        check_token_shape(token)
        if self._clock is not None:
            self._clock.lender_time(token_time(token), round_trip=round_trip)
        if self.token is not None and token_time(token) <= token_time(self.token):
            return False
        self.token = token
        try:
            atomic_write(self.path, token, 0o600)
        except OSError as exc:  # the token is still used from memory; the next ack tries again
            log.error("cannot save the lender token to %s: %s", self.path, exc)
        return True
