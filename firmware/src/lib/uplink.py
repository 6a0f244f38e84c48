"""Delivering one envelope to the lender: a confirmable CoAP POST over the modem's UDP socket, and the ack it earns.

Reliability is RFC 7252 §4.2: the request goes out again after ACK_TIMEOUT
(randomised up to ACK_RANDOM_FACTOR), the wait doubling each time, at most
MAX_RETRANSMIT times (§4.8 defaults; a node on a slow NB-IoT cell may raise
the timeout in its config). An empty ACK means a separate response follows
(§5.2.2): the node then waits `response_timeout_ms` for it and acknowledges
it. Datagrams that are not CoAP, or not about this exchange, are counted and
ignored; a RST ends the exchange.

The lender answers 2.04 Changed with the ack map shared with the gateway
path, {1: [stored seqs], 2: [already-present seqs], 3: [[index, reason code,
text], ...], ?4: a lender token}; `parse_ack` checks its shape and refuses
anything else. The token (telemetry.freshness: 12 bytes, the lender's time in
the first 4) is the node's to keep when it is newer than the one it holds and
to echo in the envelopes it signs next; the node cannot check its MAC.
"""

import os
import time

import cbor
import coap
from errors import AckError, CoapError, DeliveryError, ModemGarbage

ACK_TIMEOUT_MS = 2000
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4

ACK_STORED, ACK_ALREADY, ACK_REFUSED, ACK_TOKEN = 1, 2, 3, 4
TOKEN_BYTES = 12


class Ack:
    __slots__ = ("stored", "already", "refused", "token")

    def __init__(self, stored, already, refused, token=None):
        self.stored = stored
        self.already = already
        self.refused = refused  # [(batch index, reason code, text)]
        self.token = token  # a fresh lender token (12 bytes), or None

    def settled(self):
        """The seqs the lender holds now: stored by this request or before it."""
        return self.stored + self.already


def _uints(value, what):
    if not isinstance(value, list) or len(value) > 4096:
        raise AckError("ack %s must be a list of seqs, got %r" % (what, value))
    for item in value:
        if type(item) is not int or item < 0:
            raise AckError("ack %s holds %r, not a seq" % (what, item))
    return value


def parse_ack(payload):
    """The Ack in a 2.04 payload; AckError if it is not the ack map."""
    try:
        body = cbor.decode(payload, max_bytes=4096, max_depth=4, max_items=512)
    except ValueError as error:
        raise AckError("ack is not CBOR this node accepts: %s" % error)
    if not isinstance(body, dict):
        raise AckError("ack must be a CBOR map, got %s" % type(body).__name__)
    stored = _uints(body.get(ACK_STORED, []), "stored (key 1)")
    already = _uints(body.get(ACK_ALREADY, []), "already present (key 2)")
    refused = []
    items = body.get(ACK_REFUSED, [])
    if not isinstance(items, list):
        raise AckError("ack refusals (key 3) must be a list, got %r" % (items,))
    for item in items:
        if (not isinstance(item, list) or len(item) != 3 or type(item[0]) is not int or type(item[1]) is not int
                or not isinstance(item[2], str)):
            raise AckError("ack refusal %r is not [index, reason code, text]" % (item,))
        refused.append((item[0], item[1], item[2]))
    token = body.get(ACK_TOKEN)
    if token is not None and (type(token) is not bytes or len(token) != TOKEN_BYTES):
        raise AckError("ack token (key 4) must be %d bytes, got %r" % (TOKEN_BYTES, token))
    return Ack(stored, already, refused, token)


class Timing:
    """Retransmission parameters (RFC 7252 §4.8), from the node's config."""

    def __init__(self, ack_timeout_ms=ACK_TIMEOUT_MS, random_factor=ACK_RANDOM_FACTOR, max_retransmit=MAX_RETRANSMIT,
                 response_timeout_ms=None):
        if ack_timeout_ms <= 0 or random_factor < 1 or not 0 <= max_retransmit <= 20:
            raise ValueError("CoAP timing out of range: ack_timeout_ms > 0, random_factor >= 1, 0 <= max_retransmit <= 20")
        self.ack_timeout_ms = ack_timeout_ms
        self.random_factor = random_factor
        self.max_retransmit = max_retransmit
        # A separate response may take as long as the whole retransmission window.
        self.response_timeout_ms = response_timeout_ms or int(ack_timeout_ms * random_factor * ((2 << max_retransmit) - 1))

    def first_timeout_ms(self, random_byte):
        spread = int(self.ack_timeout_ms * (self.random_factor - 1))
        return self.ack_timeout_ms + spread * random_byte // 255


class Uplink:
    """Confirmable POSTs over one modem socket; counts what happened for the node's report."""

    def __init__(self, modem, socket, path, timing, message_id=None, random_bytes=os.urandom):
        self.modem = modem
        self.socket = socket
        self.path = path
        self.timing = timing
        self._random = random_bytes
        start = random_bytes(2)
        self.message_id = (start[0] << 8 | start[1]) if message_id is None else message_id
        self.transmissions = 0
        self.ignored = 0

    def _next_message_id(self):
        self.message_id = (self.message_id + 1) & 0xFFFF
        return self.message_id

    def post(self, payload):
        """POST payload (application/cbor); return the response Message. DeliveryError if the lender never answers."""
        message_id = self._next_message_id()
        token = self._random(4)  # RFC 7252 §5.3.1: 32 random bits against off-path forged answers
        datagram = coap.encode(coap.request(coap.POST, message_id, token, self.path, payload, coap.CBOR))
        timeout = self.timing.first_timeout_ms(self._random(1)[0])
        for _ in range(self.timing.max_retransmit + 1):
            self.modem.send(self.socket, datagram)
            self.transmissions += 1
            answer = self._await(message_id, token, timeout)
            if answer is not None:
                return answer
            timeout *= 2
        raise DeliveryError("no answer to CoAP message %d after %d transmissions" % (message_id, self.transmissions))

    def _datagrams(self, deadline):
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                return
            try:
                raw = self.modem.receive(self.socket, left)
            except ModemGarbage:
                self.ignored += 1
                continue
            if raw is None:
                return
            try:
                yield coap.decode(raw)
            except CoapError:
                self.ignored += 1

    def _await(self, message_id, token, timeout_ms):
        """The response to (message_id, token), or None when timeout_ms passed without one."""
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        for message in self._datagrams(deadline):
            if message.message_id == message_id and message.type == coap.RST:
                raise DeliveryError("the lender reset CoAP message %d" % message_id)
            if message.message_id == message_id and message.type == coap.ACK:
                if message.code != coap.EMPTY:
                    if message.token == token:
                        return message  # piggybacked response (RFC 7252 §5.2.1)
                    self.ignored += 1
                    continue
                return self._separate(token)
            if message.token == token and message.type in (coap.CON, coap.NON) and message.code >> 5 in (2, 4, 5):
                return self._acknowledge(message)
            self.ignored += 1
        return None

    def _separate(self, token):
        """After an empty ACK: wait for the separate response carrying our token (RFC 7252 §5.2.2)."""
        deadline = time.ticks_add(time.ticks_ms(), self.timing.response_timeout_ms)
        for message in self._datagrams(deadline):
            if message.token == token and message.type in (coap.CON, coap.NON) and message.code >> 5 in (2, 4, 5):
                return self._acknowledge(message)
            self.ignored += 1
        raise DeliveryError("the lender acknowledged but sent no response within %d ms" % self.timing.response_timeout_ms)

    def _acknowledge(self, message):
        if message.type == coap.CON:
            self.modem.send(self.socket, coap.empty_ack(message.message_id))
        return message
