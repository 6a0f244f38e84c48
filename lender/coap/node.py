"""The lender's node resource ``/n``: NB-IoT nodes POST one signed envelope each, over plain CoAP.

A node's firmware has no OSCORE (MicroPython has none yet), so its requests
arrive unprotected; what makes them trustworthy is the envelope's own Ed25519
signature. Hence the rules, all enforced here:

* ``/n`` is served only to plain CoAP (a `lender.coap.routing.PlainRoutes` entry in
  front of the OSCORE-protected site, which gets every other request unchanged);
* an envelope verifies only against the keys of *nodes* (`lender.evidence.ingest.NodeIngest`);
  everything else is exactly the gateway path's (same verification, chain
  check, de-duplication by (device, seq), quarantine, ack map).

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

import aiocoap

from lender.coap.blocks import TooLarge
from lender.coap.resource import IngestThread, LenderResource, outcome_message, peer_of
from lender.evidence.ingest import MAX_NODE_BODY, NodeIngest, Status
from lender.evidence.store import EvidenceStore
from telemetry.numbers import PATH_NODE


class NodeResource(LenderResource):
    """``/n``: POST one envelope, application/cbor; answered 2.04 with the ack, or 4.xx / 5.03 with a text."""

    path = PATH_NODE
    resource_type = "pledgewatch.node"

    def __init__(self, thread: IngestThread, ingest: NodeIngest) -> None:
        super().__init__(thread)
        self._ingest = ingest

    async def respond(self, request: aiocoap.Message) -> aiocoap.Message:
        self.require_post(request)
        if request.opt.block1 is not None:
            raise TooLarge(f"/n takes one envelope of at most {MAX_NODE_BODY} bytes in a single request; "
                           "no block-wise upload", cap=MAX_NODE_BODY, size=MAX_NODE_BODY + 1)
        peer = peer_of(request)
        body = request.payload
        if not self.is_cbor(request):
            outcome = await self.in_thread(
                self._ingest.refuse_request, Status.UNSUPPORTED_FORMAT,
                f"content-format {int(request.opt.content_format)} is not application/cbor (60)", body, peer=peer)
        else:
            outcome = await self.in_thread(self._ingest.envelope, body, peer=peer)
        response = outcome_message(outcome)
        if outcome.status is Status.TOO_LARGE:
            response.opt.size1 = MAX_NODE_BODY
        return response


def node_routes(thread: IngestThread, store: EvidenceStore,
                token_key: bytes | None = None) -> dict[tuple[str, ...], LenderResource]:
    """The plain-CoAP route lender.server puts in front of the OSCORE site: ``/n`` for nodes."""
    return {PATH_NODE: NodeResource(thread, NodeIngest(store, token_key=token_key))}
