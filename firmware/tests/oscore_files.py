"""node.oscore files for the firmware tests: the header provisioning writes (docs/firmware.md), never shipped."""

import hashlib
import struct

import cbor
import oscore
import oscorekeys
from check import fresh_dir, unhex

SECRET, SALT = unhex("0102030405060708090a0b0c0d0e0f10"), unhex("9e7ca92223786340")


def encode_header(keys_cbor):
    """The 512-byte header of node.oscore around the CBOR context map."""
    body = b"PWO1" + struct.pack(">H", len(keys_cbor)) + keys_cbor
    header = body + hashlib.sha256(body).digest()[:4]
    return header + bytes(oscorekeys.HEADER_BYTES - len(header))


def keys(sender_id, recipient_id, secret=SECRET, salt=SALT):
    return cbor.encode({1: sender_id, 2: recipient_id, 3: secret, 4: salt, 5: oscorekeys.ALGORITHM, 6: oscorekeys.KDF})


def context_file(sender_id, recipient_id, secret=SECRET, salt=SALT, tag="ctx"):
    """A node.oscore as provisioning writes it (header only: a fresh context)."""
    path = fresh_dir(tag) + "/node.oscore"
    with open(path, "wb") as file:
        file.write(encode_header(keys(sender_id, recipient_id, secret, salt)))
    return path


def at_sequence(path, seq):
    """The context of path with the sender sequence number about to be used set to seq (as Appendix C's vectors)."""
    context = oscore.Context(path, oscorekeys.load(path))
    context.next_seq = context.limit = seq
    return context


def load(path):
    """The context in path, as the node loads it."""
    return oscore.Context(path, oscorekeys.load(path))
