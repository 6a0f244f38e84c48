"""One attempt to deliver one datagram-sized batch: an OSCORE-protected NON request with its own token.

The uplink's lossy-link path (`agent.uplink`) sends each batch as *attempts*:
each one a non-confirmable POST with a fresh token, message id and OSCORE
sequence number, so an answer names the attempt it answers (an exact round
trip, `agent.link`), several batches can be in flight on one socket, and the
uplink -- not the CoAP message layer -- decides when to send again. Why not
aiocoap's client as is (aiocoap 0.4.17, read in its source):

* confirmable requests go one at a time per peer (NSTART = 1: a backlog per
  remote in `messagemanager.py`), and when one of them exhausts its
  retransmissions *every* request to that peer fails with it;
* its OSCORE transport waits for the answer to a NON request forever: a
  cancelled request leaves its task and token behind (one per lost answer,
  for the life of the process).

So `DatagramChannel.post` protects the request itself with the device's
context (the same `DurableSecurityContext` aiocoap's transport uses for the
block-wise path, so the sequence numbers stay one series), sends the
protected message as a plain NON request (no block-wise handling), and
unprotects the answer; cancelling the coroutine cancels aiocoap's request,
which frees its token at once. Also done here, as aiocoap's transport does:
an OSCORE 4.01 carrying Echo (the lender lost its replay window, RFC 8613
Appendix B.1.2) is answered once with that Echo; an answer that comes in
Block2 blocks (a long ack) is fetched block by block. Each batch's attempts
carry the batch's Request-Tag (RFC 9175), so the lender keeps the long acks of
concurrent batches apart (its Block2 cache is keyed by the request's options).
"""
from __future__ import annotations

from urllib.parse import urlsplit

import aiocoap
from aiocoap import oscore as aiocoap_oscore
from aiocoap.numbers import codes
from aiocoap.numbers.constants import TransportTuning
from aiocoap.optiontypes import BlockOption

from agent.exc import DatagramAnswerError

MAX_ANSWER_BYTES = 16 * 1024   # a longer answer (Block2) is refused: an ack is a few hundred bytes


class _Unreliable(TransportTuning):
    reliability = False     # NON: the uplink resends, not the message layer


UNRELIABLE = _Unreliable()


class DatagramChannel:
    """Single-datagram POSTs to one URI over `context` (a client context of its own), protected when `security` is given."""

    def __init__(self, context: aiocoap.Context, uri: str, security: object | None) -> None:
        self.context = context
        self.uri = uri
        self.security = security
        self._remote = urlsplit(uri).netloc   # host:port, for the protected (outer) message

    async def post(self, body: bytes, *, content_format: int, tag: bytes) -> aiocoap.Message:
        """Send `body` once and return the (unprotected, Block2-assembled) answer; cancel the coroutine to give up.

        Raises aiocoap's errors for the network (an ICMP unreachable) and
        `DatagramAnswerError` for an answer that cannot be used.
        """
        answer = await self._exchange(self._request(body, content_format, tag, None))
        payload = answer.payload
        while answer.opt.block2 is not None and answer.opt.block2.more:
            block = answer.opt.block2
            if len(payload) + block.size > MAX_ANSWER_BYTES or len(payload) % block.size:
                raise DatagramAnswerError(f"answer over {MAX_ANSWER_BYTES} bytes or with uneven blocks")
            following = BlockOption.BlockwiseTuple(len(payload) // block.size, False, block.size_exponent)
            answer = await self._exchange(self._request(b"", content_format, tag, following))
            if answer.opt.block2 is None or answer.opt.block2.block_number != following.block_number:
                raise DatagramAnswerError(f"asked for block {following.block_number} of the answer, got "
                                          f"{answer.opt.block2}")
            payload += answer.payload
        if answer.payload is not payload:
            answer = answer.copy(payload=payload, block2=None)
        return answer

    def _request(self, body: bytes, content_format: int, tag: bytes, block2) -> aiocoap.Message:
        request = aiocoap.Message(code=codes.POST, uri=self.uri, payload=body, content_format=content_format,
                                  transport_tuning=UNRELIABLE)
        request.opt.request_tag = [tag]
        if block2 is not None:
            request.opt.block2 = block2
        return request

    async def _exchange(self, request: aiocoap.Message) -> aiocoap.Message:
        if self.security is None:
            return await self._send(request)
        answer = await self._protected(request)
        if answer.code == codes.UNAUTHORIZED and answer.opt.echo is not None:
            answer = await self._protected(request.copy(echo=answer.opt.echo))   # RFC 8613 Appendix B.1.2
        return answer

    async def _protected(self, request: aiocoap.Message) -> aiocoap.Message:
        protected, request_id = self.security.protect(request)
        protected.unresolved_remote = self._remote
        wire = await self._send(protected)
        try:
            answer, _ = self.security.unprotect(wire, request_id)
        except (aiocoap_oscore.NotAProtectedMessage, aiocoap_oscore.ProtectionInvalid) as exc:
            raise DatagramAnswerError(f"the answer ({wire.code}) does not unprotect: {exc}") from exc
        return answer

    async def _send(self, message: aiocoap.Message) -> aiocoap.Message:
        # Awaiting the future directly: cancelling this coroutine cancels it, and aiocoap's
        # `Request` then drops its interest, which frees the token.
        return await self.context.request(message, handle_blockwise=False).response
