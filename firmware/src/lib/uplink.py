"""Delivering one envelope to the lender: a confirmable CoAP POST over the modem's UDP socket, and the ack it earns.

Reliability is RFC 7252 §4.2: the request goes out again after ACK_TIMEOUT
(randomised up to ACK_RANDOM_FACTOR), the wait doubling each time, at most
MAX_RETRANSMIT times (§4.8 defaults; a node on a slow NB-IoT cell may raise
the timeout in its config). An empty ACK means a separate response follows
(§5.2.2): the node then waits `response_timeout_ms` for it and acknowledges
it. Datagrams that are not CoAP, or not about this exchange, are counted and
ignored; a RST ends the exchange.

The lender answers 2.04 Changed with the ack map (the `ack` module reads it).

With an OSCORE context (oscore.Context) every request is protected (RFC 8613
§8.1): the inner message is the POST with its Uri-Path, Content-Format and
the envelope, the outer one a POST to no path with the OSCORE option and the
ciphertext. An answer counts only once it verifies (§8.4): a response that
fails (another context, a changed byte, a replayed Partial IV, an answer to
another request) is counted in `forged` and the wait goes on for the real
one; an unprotected answer is no answer either: the wait goes on until the
current timeout (no more retransmissions), and only then is it returned,
marked unauthenticated, for the node to log and to act on as nothing more
than "the lender cannot be reached this cycle". A verified 4.01 carrying an
Echo option (RFC 9175 §2.4: the lender lost its replay window) is answered
by the same request once more, with the Echo value inside and a new sequence
number.

`post(payload, last=True)` tells the modem driver that this exchange is the
cycle's last, so it can send Release Assistance with it (see the drivers).
"""

import os
import time

import coap
from errors import CoapError, DeliveryError, ModemGarbage, OscoreError

ACK_TIMEOUT_MS = 2000
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4

OSCORE_OPTION = 9  # RFC 8613 §2
ECHO_OPTION = 252  # RFC 9175 §2.2.1
UNAUTHORIZED = 0x81  # 4.01


class Answer:
    """The lender's answer to one POST: its (inner) code, options and payload, and whether OSCORE authenticated it."""

    __slots__ = ("code", "options", "payload", "authenticated")

    def __init__(self, code, options, payload, authenticated):
        self.code = code
        self.options = options
        self.payload = payload
        self.authenticated = authenticated

    def option(self, number):
        for item, value in self.options:
            if item == number:
                return value
        return None


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
    """Confirmable POSTs over one modem socket, OSCORE-protected when given a context; counts what happened."""

    def __init__(self, modem, socket, path, timing, message_id=None, random_bytes=os.urandom, context=None):
        self.modem = modem
        self.socket = socket
        self.path = path
        self.timing = timing
        self.context = context
        self._random = random_bytes
        start = random_bytes(2)
        self.message_id = (start[0] << 8 | start[1]) if message_id is None else message_id
        self.transmissions = 0
        self.ignored = 0
        self.forged = 0  # answers that failed OSCORE verification
        self.unprotected = 0  # answers without OSCORE to a protected request
        self.echoes = 0  # requests repeated with the lender's Echo value

    def _next_message_id(self):
        self.message_id = (self.message_id + 1) & 0xFFFF
        return self.message_id

    def post(self, payload, last=False):
        """POST payload (application/cbor); the lender's Answer. DeliveryError if the lender never answers."""
        echo = None
        while True:
            answer = self._exchange(payload, echo, last)
            if (echo is not None or not answer.authenticated or answer.code != UNAUTHORIZED
                    or answer.option(ECHO_OPTION) is None):
                return answer
            echo = answer.option(ECHO_OPTION)  # RFC 9175 §2.4: once more, proving freshness
            self.echoes += 1

    def _request(self, payload, echo):
        """(datagram for a message id and token to fill in, the OSCORE request or None)."""
        inner = coap.request(coap.POST, 0, b"", self.path, payload, coap.CBOR)
        if self.context is None:
            return inner.options, payload, None
        if echo is not None:
            inner.options.append((ECHO_OPTION, echo))
        plain = coap.encode(inner)  # header (token-less, message id 0) + options + payload
        plain[3] = coap.POST  # the plaintext is the code, then the options and payload (RFC 8613 §5.3)
        option, ciphertext, request = self.context.protect(memoryview(plain)[3:])
        return [(OSCORE_OPTION, option)], ciphertext, request

    def _exchange(self, payload, echo, last):
        message_id = self._next_message_id()
        token = self._random(4)  # RFC 7252 §5.3.1: 32 random bits against off-path forged answers
        options, body, request = self._request(payload, echo)
        datagram = coap.encode(coap.Message(coap.CON, coap.POST, message_id, token, options, body))
        del options, body
        timeout = self.timing.first_timeout_ms(self._random(1)[0])
        for _ in range(self.timing.max_retransmit + 1):
            self.modem.send(self.socket, datagram, last)
            self.transmissions += 1
            answer = self._await(message_id, token, timeout, request)
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

    def _open(self, message, request):
        """The Answer in a response message, or None when it fails OSCORE verification (counted as forged)."""
        context = self.context
        if request is None or context is None:
            return Answer(message.code, message.options, message.payload, False)
        option = message.option(OSCORE_OPTION)
        if option is None:
            self.unprotected += 1
            return Answer(message.code, message.options, message.payload, False)
        try:
            plain = context.unprotect(option, message.payload, request)
            if not plain:
                raise OscoreError("an empty OSCORE plaintext has no code")
            inner = coap.decode(bytes([0x40, plain[0], 0, 0]) + plain[1:])
        except (OscoreError, CoapError):
            self.forged += 1
            return None
        return Answer(inner.code, inner.options, inner.payload, True)

    def _take(self, message, request):
        """The Answer in a response (None when it fails verification); a confirmable one is acknowledged."""
        answer = self._open(message, request)
        if answer is not None and message.type == coap.CON:
            self.modem.send(self.socket, coap.empty_ack(message.message_id))
        return answer

    def _await(self, message_id, token, timeout_ms, request):
        """The answer to (message_id, token), or None when timeout_ms passed without one.

        Under OSCORE an unprotected answer does not end the wait: it is returned only if no verified one
        arrives before the timeout (and then the exchange is over: retransmitting brings the same answer).
        """
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        fallback = None
        for message in self._datagrams(deadline):
            if message.message_id == message_id and message.type == coap.RST:
                raise DeliveryError("the lender reset CoAP message %d" % message_id)
            if message.message_id == message_id and message.type == coap.ACK and message.code == coap.EMPTY:
                return self._separate(token, request)
            if message.token != token or not (
                    (message.type == coap.ACK and message.message_id == message_id)
                    or (message.type in (coap.CON, coap.NON) and message.code >> 5 in (2, 4, 5))):
                self.ignored += 1
                continue
            answer = self._take(message, request)
            if answer is not None and (answer.authenticated or request is None):
                return answer
            fallback = answer or fallback
        return fallback

    def _separate(self, token, request):
        """After an empty ACK: wait for the separate response carrying our token (RFC 7252 §5.2.2)."""
        deadline = time.ticks_add(time.ticks_ms(), self.timing.response_timeout_ms)
        fallback = None
        for message in self._datagrams(deadline):
            if message.token == token and message.type in (coap.CON, coap.NON) and message.code >> 5 in (2, 4, 5):
                answer = self._take(message, request)
                if answer is not None and (answer.authenticated or request is None):
                    return answer
                fallback = answer or fallback
                continue
            self.ignored += 1
        if fallback is not None:
            return fallback
        raise DeliveryError("the lender acknowledged but sent no response within %d ms" % self.timing.response_timeout_ms)
