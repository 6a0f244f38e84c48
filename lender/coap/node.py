"""The lender's node resource ``/n``: NB-IoT nodes POST one signed envelope each, under OSCORE.

Two routes serve it:

* `ProtectedNodeResource`, inside the OSCORE-protected site: the request came
  through the node's own context (created at enrollment; the node's side is
  in its ``node.oscore``), so the answer — the ack that lets the node free its
  outbox — is authenticated and encrypted back to it. The envelope must be
  signed by the key of the device whose context protected the request: over
  OSCORE a device delivers its own envelopes only (anything else is refused
  4.01 and quarantined).
* `NodeResource`, a plain-CoAP route (`lender.coap.routing.PlainRoutes`) in
  front of the protected site, for nodes that run with ``"insecure": true``:
  an envelope verifies there only against the keys of nodes registered
  without an OSCORE context (`lender.evidence.ingest.NodeIngest`), so a node
  that has a context cannot be answered in clear. Anyone can send to it, so
  its requests are screened in the strangers' lane (lender.coap.screen):
  junk is answered there, and only an envelope a registered key signed
  reaches the ingest thread.

Everything else is the gateway path's (verification, chain check,
de-duplication by (device, seq), quarantine, the ack map). The body is a
single envelope (the COSE_Sign1 bytes, CBOR tag 18), not the gateway's array:
two bytes fewer on an uplink billed per byte, and a node sends one envelope
per request anyway. Bodies over `MAX_NODE_BODY` get 4.13 with Size1; a Block1
upload too (a node never needs one).

Commands (issue 15): a node sleeps in PSM and never polls ``/c``, so the
lender hands it its oldest pending signed command (`CommandDesk.pending`) in
the ack to its report, ack key 7 (telemetry.ack), one per ack and at most
`MAX_NODE_COMMAND` bytes (a larger one is never sent to a node and expires
pending), and none in the ack to an envelope that answers a command (the
node's heap, `with_command`). Only over OSCORE, as ``/c``; the command is marked delivered. The
node verifies it, applies it and answers in the next envelope it signs (its
next wake): the `command.*` records `CommandDesk.answers` reads.

What plain CoAP leaves open (docs/firmware.md): integrity and origin of the
*evidence* are protected by the signature; confidentiality is not, and the
*ack* is not authenticated (a forged ack can make an insecure node drop an
envelope from its outbox before it arrived).
"""
from __future__ import annotations

import dataclasses
import time

import aiocoap
from aiocoap import error as coap_error

from lender.coap.blocks import TooLarge
from lender.coap.resource import IngestThread, LenderResource, outcome_message, peer_of
from lender.coap.screen import StrangersLane
from lender.enrollment.contexts import LenderCredentials
from lender.evidence.ingest import (
    COSE_SIGN1_FIRST_BYTE,
    MAX_NODE_BODY,
    BatchOutcome,
    Ingest,
    NodeIngest,
    Status,
)
from lender.evidence.commands import CommandDesk
from lender.evidence.store import EvidenceStore
from telemetry import cbor
from telemetry.ack import MAX_NODE_COMMAND, Ack
from telemetry.command import RECORD_PREFIX
from telemetry.envelope import decode as decode_envelope
from telemetry.exc import WireFormatError
from telemetry.numbers import PATH_NODE


class NodeResource(LenderResource):
    """``/n``: POST one envelope, application/cbor; answered 2.04 with the ack, or 4.xx / 5.03 with a text."""

    path = PATH_NODE
    resource_type = "pledgewatch.node"

    authenticated = False  # requests here come from anyone (ProtectedNodeResource: through a device's context)

    def __init__(self, thread: IngestThread, ingest: NodeIngest, strangers: StrangersLane | None = None) -> None:
        super().__init__(thread)
        self._ingest = ingest
        self._strangers = strangers  # where unauthenticated requests are screened (None: straight to `thread`)

    async def respond(self, request: aiocoap.Message) -> aiocoap.Message:
        self.require_post(request)
        if request.opt.block1 is not None:
            raise TooLarge(f"/n takes one envelope of at most {MAX_NODE_BODY} bytes in a single request; "
                           "no block-wise upload", cap=MAX_NODE_BODY, size=MAX_NODE_BODY + 1)
        peer = peer_of(request)
        body = request.payload
        strangers = self._strangers
        if not self.is_cbor(request):
            lane, ingest = (strangers, strangers.node_ingest) if strangers is not None else (self.thread, self._ingest)
            outcome = await self.in_lane(
                lane, ingest.refuse_request, Status.UNSUPPORTED_FORMAT,
                f"content-format {int(request.opt.content_format)} is not application/cbor (60)", body, peer=peer,
                attributable=self.authenticated)
        else:
            outcome = None if strangers is None else await strangers.screen(body, peer=peer)
            if outcome is None:
                outcome = await self.in_thread(self._envelope, request, body, peer)
                if strangers is not None:
                    strangers.vouched(request, outcome)
        response = outcome_message(outcome)
        if outcome.status is Status.TOO_LARGE:
            response.opt.size1 = MAX_NODE_BODY
        return response

    def _envelope(self, request: aiocoap.Message, body: bytes, peer: str) -> BatchOutcome:
        """In the ingest thread: one envelope from a plain-CoAP request, checked against the keys of nodes."""
        return self._ingest.envelope(body, peer=peer)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeOutcome(BatchOutcome):
    """A node's outcome whose ack carries one pending signed command (ack key 7)."""

    command: bytes | None = None

    def ack(self) -> bytes:
        return Ack(self.stored, self.already, self.refused, token=self.token, receipt=self.receipt,
                   checkpoint=self.checkpoint, command=self.command).encode()


MAX_HANDOUTS = 6  # acks that may carry one command to a node that has not answered it (then it waits for expiry)


def with_command(outcome: BatchOutcome, desk: CommandDesk, device: str, envelope: bytes,
                 handouts: dict[tuple[str, int], int] | None = None) -> BatchOutcome:
    """`outcome` with the device's oldest pending command that fits a node's ack, marked delivered; as is without one.

    Pending is asked after the envelope was stored, so a command the envelope
    just answered is not handed out again. Bounded by the node's 128 KB heap
    (docs/firmware.md), which takes a large uplink or a large downlink in one
    exchange, not both: the ack to an envelope that answers a command (its
    `command.*` records, about twice a report's size) carries none, the next
    goes with the ack to the next report; an ack carrying a command leaves out
    the checkpoint reference (key 6, which the node does not read); and a
    command is handed out at most `MAX_HANDOUTS` times per lender run while the
    node does not answer it (a node that cannot take it, or refuses it
    unverified, is not sent it at every wake until it expires).
    """
    if outcome.status is not Status.CHANGED or not (outcome.stored or outcome.already):
        return outcome
    counts = {} if handouts is None else handouts
    pending = [c for c in desk.pending(device)
               if len(c.raw) <= MAX_NODE_COMMAND and counts.get((device, c.seq), 0) < MAX_HANDOUTS]
    if not pending:
        return outcome
    try:
        if any(r.name.startswith(RECORD_PREFIX) for r in decode_envelope(envelope).records):
            return outcome
    except WireFormatError:
        return outcome
    command = pending[0]
    counts[(device, command.seq)] = counts.get((device, command.seq), 0) + 1
    desk.store.mark_delivered(device, command.seq, time.time())
    fields = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(BatchOutcome)}
    fields["checkpoint"] = None
    return NodeOutcome(**fields, command=command.raw)


class ProtectedNodeIngest(Ingest):
    """`Ingest` for ``/n`` under OSCORE: every active key (the OSCORE sender narrows it), and a node's compact ack
    (a checkpoint reference, not the receipt: a node's downlink is dear)."""

    compact_receipts = True

    def __init__(self, store: EvidenceStore, **options) -> None:
        super().__init__(store, **options)
        self.max_kept = MAX_NODE_BODY


class ProtectedNodeResource(NodeResource):
    """``/n`` inside the OSCORE site: one envelope, signed by the device whose context protected the request."""

    authenticated = True

    def __init__(self, thread: IngestThread, credentials: LenderCredentials, ingest: ProtectedNodeIngest) -> None:
        super().__init__(thread, ingest)  # type: ignore[arg-type]  # refuse_request is all NodeResource uses of it
        self._protected = ingest
        self._credentials = credentials
        self._desk = CommandDesk(ingest.store, None)  # hands out commands only: it signs none
        self._handouts: dict[tuple[str, int], int] = {}  # (device, command seq) -> acks that carried it (ingest thread)

    async def respond(self, request: aiocoap.Message) -> aiocoap.Message:
        if self._credentials.device_of(request) is None:  # only with --insecure does plain CoAP get this far
            raise coap_error.Unauthorized("/n inside the protected site takes OSCORE requests only")
        return await super().respond(request)

    def _envelope(self, request: aiocoap.Message, body: bytes, peer: str) -> BatchOutcome:
        ingest = self._protected
        sender = self._credentials.device_of(request)
        assert sender is not None
        if len(body) > MAX_NODE_BODY:
            return ingest.refuse_request(
                Status.TOO_LARGE, f"body of {len(body)} bytes is over the node path's {MAX_NODE_BODY}-byte cap", body,
                peer=peer, attributable=True)
        if not body or body[0] != COSE_SIGN1_FIRST_BYTE:
            return ingest.refuse_request(
                Status.BAD_REQUEST, "body must be one envelope: a COSE_Sign1 message (CBOR tag 18)", body, peer=peer,
                attributable=True)
        device = ingest.store.device(sender)
        try:
            kid = decode_envelope(body).kid
        except WireFormatError:
            kid = None  # the ingest refuses it as malformed, with the reason
        if device is not None and kid is not None and kid != device.kid:
            return ingest.refuse_request(
                Status.UNAUTHORIZED, f"the envelope is signed by key {kid.hex()}, not by {sender}'s ({device.kid.hex()}), "
                                     f"whose OSCORE context protected the request: a device delivers its own envelopes only",
                body, peer=peer, attributable=True)
        return with_command(ingest.batch(cbor.encode([bytes(body)]), peer=peer, sender=sender), self._desk, sender,
                            body, self._handouts)


def node_routes(thread: IngestThread, store: EvidenceStore, token_key: bytes | None = None,
                strangers: StrangersLane | None = None) -> dict[tuple[str, ...], LenderResource]:
    """The plain-CoAP route lender.server puts in front of the OSCORE site: ``/n`` for insecure nodes, screened
    in `strangers` (whose `Ingest` the refusals' policy comes from)."""
    refusals = {} if strangers is None else {"refusals": strangers.node_ingest.refusals}
    return {PATH_NODE: NodeResource(thread, NodeIngest(store, token_key=token_key, **refusals), strangers)}


def protected_node_resource(thread: IngestThread, store: EvidenceStore, credentials: LenderCredentials,
                            token_key: bytes | None = None) -> ProtectedNodeResource:
    """The ``/n`` lender.server adds to the OSCORE-protected site (with the ingest thread's refusals' policy)."""
    return ProtectedNodeResource(thread, credentials, ProtectedNodeIngest(store, token_key=token_key,
                                                                          refusals=thread.ingest.refusals))
