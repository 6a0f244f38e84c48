"""The strangers' lane: unauthenticated requests are checked here, so they never wait in front of authenticated ones.

``/n`` over plain CoAP, ``/enroll``, ``/installations`` and the site files
need no OSCORE context, so anyone can send them, as fast as they like. Their
work runs in `StrangersLane`, a `Lane` of its own (one thread, a bounded
queue: a full queue answers 5.03 with Max-Age at once) with its own store
connection, used to read the registry, to keep sampled junk in the
quarantine and for the enrollment desk's rare writes. An envelope whose
signature verifies against a registered key (or a refusal such a key vouches
for) is handed on to the ingest thread, the evidence's one writer; junk is
answered here (lender.evidence.ingest: `Ingest.refuse_unvouched`).

Requests that name a device (the envelope's device id, an enrollment's device,
a site request's technician) also spend from that name's budget
(lender.coap.gate: `DEVICE`, 2 a second: a node sends one a minute or so);
over it, 4.29 Too Many Requests with Max-Age (RFC 8516). A sender that names someone else's device
can so slow that device's unauthenticated requests down, never forge them; a
device with an OSCORE context is served in the protected site, untouched by
this lane.

A plain-CoAP request that got a new envelope stored (its signature verified,
and no replay: a replay is only "already present") makes its host trusted at
the gate, as an OSCORE request does (`vouched`): an insecure node, or a
gateway of a lender run with --insecure, then drains its backlog at the
trusted budget, not at a stranger's.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import aiocoap
from aiocoap import error

from lender.coap.gate import DEVICE, host_of
from lender.coap.limits import Budgets, Rate
from lender.coap.resource import Busy, Lane, StorageUnavailable
from lender.evidence.ingest import BatchOutcome, Ingest, NodeIngest
from lender.evidence.store import EvidenceStore
from lender.exc import StoreError
from telemetry.envelope import decode as decode_envelope
from telemetry.exc import WireFormatError

STRANGERS_DEPTH = 16                       # unauthenticated requests waiting, at most
DEVICES = 16384                            # claimed device ids tracked


class TooManyRequests(error.ConstructionRenderableError):
    """4.29 with Max-Age (RFC 8516): too many requests name this device; retry after Max-Age seconds."""

    code = aiocoap.numbers.codes.TOO_MANY_REQUESTS

    def __init__(self, device: str, wait: float) -> None:
        self.max_age = max(1, math.ceil(wait))
        super().__init__(f"too many unauthenticated requests name device {device}; retry in {self.max_age} s")

    def to_message(self) -> aiocoap.Message:
        response = super().to_message()
        response.opt.max_age = self.max_age
        return response


class StrangersLane(Lane):
    """The lane for unauthenticated requests, with its own store connection and per-device budgets."""

    def __init__(self, store: EvidenceStore, ingest: Ingest, node_ingest: NodeIngest, *,
                 depth: int = STRANGERS_DEPTH, per_device: Rate = DEVICE,
                 trust: Callable[[str], None] = lambda host: None) -> None:
        super().__init__("lender-strangers", depth=depth)
        self.store = store
        self.ingest = ingest            # over `store`: screens batches for /t (only with --insecure)
        self.node_ingest = node_ingest  # over `store`: screens envelopes for /n
        self.devices = Budgets(per_device, capacity=DEVICES)
        self._trust = trust

    def vouched(self, request: aiocoap.Message, outcome: BatchOutcome) -> None:
        """`outcome` stored new signed evidence from `request`'s host: trust the host at the gate."""
        host = host_of(request.remote)
        if outcome.stored and host is not None:
            self._trust(host)

    def spend(self, device: str | None) -> None:
        """Spend one request from `device`'s budget (None: no device named); raises TooManyRequests over it."""
        if device is not None and not self.devices.take(device):
            raise TooManyRequests(device, self.devices.wait(device))

    async def screen(self, body: bytes, *, peer: str) -> BatchOutcome | None:
        """The answer to one plain-CoAP envelope for /n if it is junk, or None to hand it on to the ingest thread.

        A body that is not one envelope at all (most junk) is answered at once in the event loop; only a sampled
        refusal's write comes here. Anything shaped like an envelope is decoded and verified in this lane."""
        shaped = self.node_ingest.refuse_shape(body, peer=peer)
        if shaped is None:
            return await self._in_lane(self.screen_envelope, body, peer=peer)
        outcome, keep = shaped
        if keep is not None:
            try:
                await self._in_lane(self.store.quarantine, keep)
            except Busy:  # the sample is lost, the refusal still answered
                pass
        return outcome

    async def _in_lane(self, function, *args, **kwargs):
        try:
            return await self.call(function, *args, **kwargs)
        except StoreError as exc:
            raise StorageUnavailable() from exc

    def screen_envelope(self, body: bytes, *, peer: str) -> BatchOutcome | None:
        """In this lane: the answer to one plain-CoAP envelope for /n if it is junk, or None to hand it on."""
        self.spend(_claimed(body))
        return self.node_ingest.screen_envelope(body, peer=peer)

    def screen_batch(self, body: bytes, *, peer: str) -> BatchOutcome | None:
        """In this lane: the answer to a plain-CoAP batch for /t if it is junk, or None to hand it on."""
        return self.ingest.refuse_unvouched(body, peer=peer)

    def decide(self, claim: Callable[[bytes], str | None], decide: Callable, body: bytes):
        """In this lane: spend from the budget of the device `claim(body)` names, then `decide(body)`."""
        self.spend(claim(body))
        return decide(body)

    def close(self) -> None:
        super().close()
        self.flush()

    def flush(self) -> None:
        self.ingest.flush_refusals()


def _claimed(body: bytes) -> str | None:
    try:
        return decode_envelope(body).device
    except WireFormatError:
        return None
