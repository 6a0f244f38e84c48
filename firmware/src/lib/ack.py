"""The lender's ack to one envelope, as the node reads it: the map shared with the gateway path (telemetry.ack).

The lender answers 2.04 Changed with {1: [stored seqs], 2: [already-present
seqs], 3: [[index, reason code, text], ...], ?4: a lender token, ?7: one signed
command}; `parse_ack`
checks its shape and refuses anything else with AckError. The token
(telemetry.freshness: 12 bytes, the lender's time in the first 4) is the
node's to keep when it is newer than the one it holds and to echo in the
envelopes it signs next; the node cannot check its MAC, so it takes one only
from an ack OSCORE authenticated (or, with "insecure": true, from any).
Key 7 (issue 15) carries the exact bytes of one pending lender command, at
most MAX_COMMAND bytes; the node takes it only from an authenticated ack and
verifies it itself after the send phase (the commands module). Other keys
(5, 6, and any later one) are skipped.
"""

import cbordecode
from errors import AckError

ACK_STORED, ACK_ALREADY, ACK_REFUSED, ACK_TOKEN, ACK_COMMAND = 1, 2, 3, 4, 7
TOKEN_BYTES = 12
MAX_COMMAND = 384  # telemetry.ack.MAX_NODE_COMMAND


class Ack:
    __slots__ = ("stored", "already", "refused", "token", "command")

    def __init__(self, stored, already, refused, token=None, command=None):
        self.stored = stored
        self.already = already
        self.refused = refused  # [(batch index, reason code, text)]
        self.token = token  # a fresh lender token (12 bytes), or None
        self.command = command  # one signed command's bytes (unverified), or None

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
        body = cbordecode.decode(payload, max_bytes=4096, max_depth=4, max_items=512)
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
    command = body.get(ACK_COMMAND)
    if command is not None and (type(command) is not bytes or not 0 < len(command) <= MAX_COMMAND):
        raise AckError("ack command (key 7) must be 1..%d bytes" % MAX_COMMAND)
    return Ack(stored, already, refused, token, command)
