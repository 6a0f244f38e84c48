"""The lender's node resource ``/n``: NB-IoT nodes POST one signed envelope each, over plain CoAP.

A node's firmware has no OSCORE (MicroPython has none yet), so its requests
arrive unprotected; what makes them trustworthy is the envelope's own Ed25519
signature. Hence the rules, all enforced here:

* ``/n`` is served only to plain CoAP (a `lender.routing.PlainRoutes` entry in
  front of the OSCORE-protected site, which gets every other request unchanged);
* an envelope verifies only against the keys of *nodes*: active devices
  registered without an OSCORE context (`NodeIngest.keys`). A gateway's key on this
  path is refused (reason 2, unknown key, with a text saying why): gateways
  speak OSCORE to ``/t``;
* everything else is exactly the gateway path's: `NodeIngest` is
  `lender.ingest.Ingest` (same verification, chain check, de-duplication by
  (device, seq), quarantine, ack map {1: stored, 2: already, 3: refused}), fed
  the one envelope as a one-item batch.

The body is a single envelope (the COSE_Sign1 bytes, CBOR tag 18), not the
gateway's array: two bytes fewer on an NB-IoT uplink billed per byte, and a
node sends one envelope per request anyway. Bodies over `MAX_NODE_BODY` get
4.13 with Size1; a Block1 upload too (a node never needs one).

What plain CoAP leaves open (docs/firmware.md): integrity and origin of the
*evidence* are protected by the signature; confidentiality is not (readings
travel in clear), and the *ack* is not authenticated (a forged ack can make a
node drop envelopes from its outbox before they arrived; the node's 32-bit
random token and message id make that an on-path attack).
"""
from __future__ import annotations

import logging
import aiocoap
from aiocoap import interfaces
from aiocoap.numbers import codes

from lender.exc import StoreError
from lender.ingest import ActiveKeys, BatchOutcome, Ingest, Status
from lender.server import CBOR_FORMAT, RETRY_AFTER, IngestThread, _answer, _peer, _text
from lender.store import EvidenceStore
from telemetry import cbor
from telemetry.envelope import Reason, Verdict

log = logging.getLogger(__name__)

NODE_PATH = ("n",)
MAX_NODE_BODY = 1024  # a typical node report is ~170 bytes; the node's outbox slot holds 304
COSE_SIGN1_TAG = 0xD2  # CBOR tag 18, the first byte of every envelope


class NodeIngest(Ingest):
    """`Ingest` restricted to node keys, taking one envelope per request (see the module docstring)."""

    def __init__(self, store: EvidenceStore, **options) -> None:
        super().__init__(store, **options)
        # nodes: active devices registered without an OSCORE context
        self.keys = ActiveKeys(store, admits=lambda device: device.oscore_context is None)

    def _verdict(self, raw: bytes) -> Verdict:
        verdict = super()._verdict(raw)
        envelope = verdict.envelope
        if verdict.reason is Reason.UNKNOWN_KEY and envelope is not None:
            holder = self.store.device_by_kid(envelope.kid)
            if holder is not None and holder.active:
                return Verdict(Reason.UNKNOWN_KEY,
                               f"the key {envelope.kid.hex()} belongs to {holder.device}, which has an OSCORE context: "
                               "it sends to /t over OSCORE; /n takes the keys of nodes only", envelope)
        return verdict

    def envelope(self, body: bytes, *, peer: str) -> BatchOutcome:
        """Process the body of one POST to /n: a single envelope."""
        if len(body) > MAX_NODE_BODY:
            return self.refuse_request(
                Status.TOO_LARGE, f"body of {len(body)} bytes is over the node path's {MAX_NODE_BODY}-byte cap", body,
                peer=peer)
        if not body or body[0] != COSE_SIGN1_TAG:
            return self.refuse_request(
                Status.BAD_REQUEST, "body must be one envelope: a COSE_Sign1 message (CBOR tag 18), not an array "
                                    "(arrays of envelopes go to /t)", body, peer=peer)
        return self.batch(cbor.encode([bytes(body)]), peer=peer)


class NodeResource(interfaces.Resource):
    """``/n``: POST one envelope, application/cbor; answered 2.04 with the ack, or 4.xx / 5.03 with a text."""

    def __init__(self, thread: IngestThread, ingest: NodeIngest) -> None:
        super().__init__()
        self._thread = thread
        self._ingest = ingest

    def get_link_description(self) -> dict:
        return {"ct": str(CBOR_FORMAT), "rt": "pledgewatch.node"}

    async def render(self, request):
        raise RuntimeError("NodeResource is used through render_to_pipe only")

    async def needs_blockwise_assembly(self, request):
        return False

    async def render_to_pipe(self, pipe) -> None:
        pipe.add_response(await self._respond(pipe.request), is_last=True)

    async def _respond(self, request: aiocoap.Message) -> aiocoap.Message:
        if request.code != codes.POST:
            return _text(codes.METHOD_NOT_ALLOWED, "only POST is allowed on /n")
        peer = _peer(request)
        if request.opt.block1 is not None:
            response = _text(codes.REQUEST_ENTITY_TOO_LARGE, f"/n takes one envelope of at most {MAX_NODE_BODY} bytes "
                                                             "in a single request; no block-wise upload")
            response.opt.size1 = MAX_NODE_BODY
            return response
        body = request.payload
        try:
            if request.opt.content_format not in (None, CBOR_FORMAT):
                outcome = await self._thread.call(
                    self._ingest.refuse_request, Status.UNSUPPORTED_FORMAT,
                    f"content-format {int(request.opt.content_format)} is not application/cbor (60)", body, peer=peer)
            else:
                outcome = await self._thread.call(self._ingest.envelope, body, peer=peer)
        except StoreError as exc:
            log.error("envelope from node %s not stored, answered 5.03 (the node retries): %s", peer, exc)
            response = _text(codes.SERVICE_UNAVAILABLE, "storage unavailable; nothing was stored, retry later")
            response.opt.max_age = RETRY_AFTER
            return response
        response = _answer(outcome)
        if outcome.status is Status.TOO_LARGE:
            response.opt.size1 = MAX_NODE_BODY
        return response


def node_routes(thread: IngestThread, store: EvidenceStore) -> dict[tuple[str, ...], interfaces.Resource]:
    """The plain-CoAP route lender.server puts in front of the OSCORE site: ``/n`` for nodes."""
    return {NODE_PATH: NodeResource(thread, NodeIngest(store))}
