"""A minimal CoAP message codec (RFC 7252 §3) for the node: what a confirmable POST and its answer need, no more.

Encodes requests with a token, Uri-Path and Content-Format options and a
payload; decodes any well-formed message (options it does not know are kept
as numbers, so a critical one can be refused by the caller), and refuses
malformed ones with CoapError: a version other than 1, a token longer than 8
bytes, the reserved option nibble 15, an option running past the end, a
payload marker with no payload (§3.1), a code in the reserved class 1, or
more than `max_options` options.
"""

from errors import CoapError

VERSION = 1
CON, NON, ACK, RST = 0, 1, 2, 3
EMPTY = 0x00
GET, POST = 0x01, 0x02
CHANGED = 0x44  # 2.04

URI_PATH = 11
CONTENT_FORMAT = 12
CBOR = 60

_PAYLOAD_MARKER = 0xFF


def code_text(code):
    """'2.04' for 0x44."""
    return "%d.%02d" % (code >> 5, code & 0x1F)


class Message:
    __slots__ = ("type", "code", "message_id", "token", "options", "payload")

    def __init__(self, type, code, message_id, token=b"", options=(), payload=b""):
        self.type = type
        self.code = code
        self.message_id = message_id
        self.token = token
        self.options = list(options)  # (number, value bytes), in order
        self.payload = payload

    def option(self, number):
        for item, value in self.options:
            if item == number:
                return value
        return None


def _option_nibble(value, out):
    """The 4-bit delta/length nibble for value, with its extended bytes appended to out (§3.1)."""
    if value < 13:
        return value
    if value < 269:
        out.append(value - 13)
        return 13
    value -= 269
    out.append(value >> 8)
    out.append(value & 0xFF)
    return 14


def _uint(value):
    """An option uint: big-endian, shortest, zero as no bytes (§3.2)."""
    out = []
    while value:
        out.append(value & 0xFF)
        value >>= 8
    out.reverse()
    return bytes(out)


def encode(message):
    token = message.token
    if len(token) > 8:
        raise CoapError("a token is at most 8 bytes, got %d" % len(token))
    if not 0 <= message.message_id <= 0xFFFF:
        raise CoapError("a message id is 16 bits, got %r" % (message.message_id,))
    out = bytearray([(VERSION << 6) | (message.type << 4) | len(token), message.code,
                     message.message_id >> 8, message.message_id & 0xFF])
    out.extend(token)
    previous = 0
    for number, value in sorted(message.options, key=lambda item: item[0]):
        extended = bytearray()
        delta = _option_nibble(number - previous, extended)
        length = _option_nibble(len(value), extended)
        out.append((delta << 4) | length)
        out.extend(extended)
        out.extend(value)
        previous = number
    if message.payload:
        out.append(_PAYLOAD_MARKER)
        out.extend(message.payload)
    return out  # a bytearray: no second copy of a datagram on a small heap


def request(code, message_id, token, path, payload=b"", content_format=None, confirmable=True):
    """A request message; path is a '/'-separated Uri-Path ('n' or 'a/b')."""
    options = [(URI_PATH, segment.encode()) for segment in path.split("/") if segment]
    if content_format is not None:
        options.append((CONTENT_FORMAT, _uint(content_format)))
    return Message(CON if confirmable else NON, code, message_id, token, options, payload)


def empty_ack(message_id):
    return encode(Message(ACK, EMPTY, message_id))


def _extended(data, position, nibble, what):
    if nibble < 13:
        return nibble, position
    if nibble == 13:
        if position + 1 > len(data):
            raise CoapError("%s runs past the end of the message" % what)
        return data[position] + 13, position + 1
    if nibble == 14:
        if position + 2 > len(data):
            raise CoapError("%s runs past the end of the message" % what)
        return (data[position] << 8 | data[position + 1]) + 269, position + 2
    raise CoapError("%s uses the reserved nibble 15 (RFC 7252 §3.1)" % what)


def decode(data, max_options=32):
    """A Message from one datagram; CoapError for anything RFC 7252 §3 calls a format error."""
    if len(data) < 4:
        raise CoapError("a CoAP message is at least 4 bytes, got %d" % len(data))
    first = data[0]
    if first >> 6 != VERSION:
        raise CoapError("CoAP version %d, expected 1" % (first >> 6))
    token_length = first & 0x0F
    if token_length > 8:
        raise CoapError("token length %d is reserved (RFC 7252 §3)" % token_length)
    code = data[1]
    if code >> 5 == 1 or code >> 5 == 6 or code >> 5 == 7:
        raise CoapError("code %s is in a reserved class" % code_text(code))
    position = 4 + token_length
    if position > len(data):
        raise CoapError("the token runs past the end of the message")
    message = Message((first >> 4) & 0x03, code, data[2] << 8 | data[3], bytes(data[4:position]))
    number = 0
    while position < len(data):
        head = data[position]
        position += 1
        if head == _PAYLOAD_MARKER:
            if position == len(data):
                raise CoapError("a payload marker with no payload (RFC 7252 §3.1)")
            message.payload = bytes(data[position:])
            break
        delta, position = _extended(data, position, head >> 4, "an option delta")
        length, position = _extended(data, position, head & 0x0F, "an option length")
        if position + length > len(data):
            raise CoapError("option %d runs past the end of the message" % (number + delta))
        number += delta
        message.options.append((number, bytes(data[position : position + length])))
        position += length
        if len(message.options) > max_options:
            raise CoapError("more than %d options" % max_options)
    if code == EMPTY and (token_length or message.options or message.payload):
        raise CoapError("an empty message (code 0.00) must be header only (RFC 7252 §4.1)")
    return message
