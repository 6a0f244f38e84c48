"""OSCORE (RFC 8613) messages for the node: requests protected and responses verified with its security context.

The suite is the one every pledgewatch context uses (telemetry.numbers):
AES-CCM-16-64-128 (COSE algorithm 10: 16-byte key, 13-byte nonce, 8-byte tag)
with HKDF-SHA256. Neither exists in MicroPython; `oscorekeys` derives the
keys (HKDF over hashlib's SHA-256) from node.oscore, and this module does the
rest on what every port has, `cryptolib.aes`:

* AES-CCM (RFC 3610) with M = 8, L = 2: the CBC-MAC is the last block of
  AES-CBC with a zero IV over B_0, the encoded AAD and the message (one
  cryptolib call), the encryption is CTR: the counter blocks A_0..A_n through
  AES-ECB (one call) XORed onto the message and the tag;
* the nonce, the AAD (Enc_structure over the external_aad array) and the
  OSCORE option value of RFC 8613 §5.2, §5.4 and §6.1.

Behind node.oscore's 512-byte header the firmware keeps its sender sequence
record: two slots of 32 bytes at offsets 512 and 1024 (one flash sector each,
so a torn write of one never touches the other or the header), written
alternately like the chain state's: magic "PWS1", generation u32, ceiling
u64, the lender's highest Partial IV + 1 u64 (0: none seen), the replay
bitmap below it u32, a 4-byte check. A sequence number is never used twice
because it is *reserved* before use (RFC 8613 Appendix B.1.1): every number
below the saved ceiling may have been used; a cycle starts at the ceiling and
saves a higher one before its first request. A new record fills both slots
before its first number is used, so an empty slot beside a damaged one can
only be a first save cut short. A power cut, a torn save (the older slot
survives, whose ceiling covers every number handed out under it) or a wiped
`state/` folder never brings an old number back: the record travels with the
secret, and a new context (re-provisioning) starts a new record with a new
secret. Both slots damaged is an error, never a restart from 0.

Responses: one without a Partial IV uses the request's nonce; one with a
Partial IV (the lender's own sequence number, e.g. the 4.01 of an Echo
challenge) must be above the lender's highest seen or unseen inside the
32-wide window (§7.4). Either is bound to its request by the AAD (request kid
and Partial IV), so a response to another request, from another context or
changed on the way fails the tag check: OscoreError.
"""

import hashlib
import struct

from cryptolib import aes

from errors import OscoreError, StorageError

AEAD = 10  # COSE algorithm id of AES-CCM-16-64-128
NONCE_BYTES = 13
TAG_BYTES = 8
MAX_ID_BYTES = NONCE_BYTES - 6
MAX_SEQ = (1 << 40) - 1  # a Partial IV is at most 5 bytes
OPTION = 9  # the OSCORE option (RFC 8613 §2)
ECHO = 252  # the Echo option (RFC 9175 §2.2.1), class E: inside the ciphertext
WINDOW = 32
RESERVE = 16  # sequence numbers one save reserves

SLOT_OFFSETS = (512, 1024)  # behind the 512-byte header (oscorekeys)
_SLOT_MAGIC = b"PWS1"
_SLOT = ">4sIQQI"
_SLOT_BYTES = struct.calcsize(_SLOT) + 4


def _bstr(data):
    """A CBOR byte string head and data (lengths below 256: ids, Partial IVs, the external AAD)."""
    if len(data) < 24:
        return bytes([0x40 + len(data)]) + data
    return bytes([0x58, len(data)]) + data


# --- AES-CCM (RFC 3610, M = 8, L = 2) -------------------------------------------------

def _xor_into(target, source):
    for index in range(len(target)):
        target[index] ^= source[index]


def _tag(key, nonce, message, aad):
    """The CBC-MAC T (8 bytes) over B_0, the length-prefixed AAD and the message, zero-padded (RFC 3610 §2.2).

    Block by block through one CBC cipher (it keeps the chaining value between calls) and one 16-byte buffer: a
    small heap never has to find one block the size of the message.
    """
    if len(message) > 0xFFFF or len(aad) >= 0xFF00:
        raise OscoreError("AES-CCM with L = 2 takes at most 65535 bytes and an AAD below 65280")
    cbc = aes(key, 2, bytes(16))
    block = bytearray(16)
    block[0] = (0x40 if aad else 0) | ((TAG_BYTES - 2) // 2) << 3 | 1
    block[1:14] = nonce
    block[14] = len(message) >> 8
    block[15] = len(message) & 0xFF
    cbc.encrypt(block, block)
    if aad:
        _mac_blocks(cbc, block, struct.pack(">H", len(aad)) + aad)
    _mac_blocks(cbc, block, message)
    return block[:TAG_BYTES]


def _mac_blocks(cbc, block, data):
    """Feed data, zero-padded to whole blocks, through the CBC cipher; block ends as the last cipher block."""
    for start in range(0, len(data), 16):
        chunk = data[start : start + 16]
        block[: len(chunk)] = chunk
        for index in range(len(chunk), 16):
            block[index] = 0
        cbc.encrypt(block, block)


def _crypt(key, nonce, data, tag):
    """CTR (RFC 3610 §2.3): data XOR S_1, S_2, ... in place (a bytearray or memoryview), and the tag XOR S_0."""
    ecb = aes(key, 1)
    counter = bytearray(16)
    stream = bytearray(16)
    counter[0] = 1
    counter[1:14] = nonce
    for index in range((len(data) + 15) // 16 + 1):
        counter[14] = index >> 8
        counter[15] = index & 0xFF
        ecb.encrypt(counter, stream)
        if index:
            part = data[16 * (index - 1) : 16 * index]
            _xor_into(part, stream)
        else:
            _xor_into(tag, stream)


def ccm_encrypt(key, nonce, plaintext, aad):
    """The ciphertext and its 8-byte tag (RFC 3610 §2.2-2.4), in one buffer of the exact size."""
    length = len(plaintext)
    out = bytearray(length + TAG_BYTES)
    out[:length] = plaintext
    out[length:] = _tag(key, nonce, plaintext, aad)
    view = memoryview(out)
    _crypt(key, nonce, view[:length], view[length:])
    return out


def ccm_decrypt(key, nonce, data, aad):
    """The plaintext of ciphertext||tag; OscoreError if the tag does not verify (nothing of the plaintext leaks)."""
    if len(data) < TAG_BYTES:
        raise OscoreError("an AES-CCM ciphertext is at least its %d-byte tag" % TAG_BYTES)
    length = len(data) - TAG_BYTES
    plain = bytearray(data)
    view = memoryview(plain)
    received = view[length:]
    _crypt(key, nonce, view[:length], received)  # the received tag, decrypted: T as the sender computed it
    expected = _tag(key, nonce, view[:length], aad)
    difference = 0
    for index in range(TAG_BYTES):
        difference |= expected[index] ^ received[index]
    if difference:
        raise OscoreError("the OSCORE message does not verify (wrong context, or changed on the way)")
    return bytes(view[:length])


# --- the pieces of RFC 8613 §5 and §6 ------------------------------------------------

def partial_iv(seq):
    """A sender sequence number as a Partial IV: big-endian, shortest, at least one byte (§6.1)."""
    length = 1
    while seq >> (8 * length):
        length += 1
    return bytes((seq >> (8 * (length - 1 - index))) & 0xFF for index in range(length))


def nonce(common_iv, identifier, piv):
    """§5.2: the id's length, the id left-padded to 7 bytes, the Partial IV left-padded to 5, XOR the common IV."""
    out = bytearray(NONCE_BYTES)
    out[0] = len(identifier)
    out[1 + MAX_ID_BYTES - len(identifier) : 1 + MAX_ID_BYTES] = identifier
    out[NONCE_BYTES - len(piv) :] = piv
    _xor_into(out, common_iv)
    return bytes(out)


def aad(request_kid, request_piv):
    """The AAD: Enc_structure ["Encrypt0", h'', external_aad], external_aad = [1, [10], kid, piv, h''] (§5.4)."""
    external = b"\x85\x01\x81\x0a" + _bstr(request_kid) + _bstr(request_piv) + b"\x40"
    return b"\x83\x68Encrypt0\x40" + _bstr(external)


def option_value(piv, kid):
    """The OSCORE option of a request: flags (n = Partial IV length, k = 1), the Partial IV, the kid (§6.1)."""
    return bytes([0x08 | len(piv)]) + piv + kid


def parse_option(value):
    """(Partial IV or None, kid or None) of an OSCORE option value; OscoreError for a malformed or kid-context one."""
    if not value:
        return None, None
    flags = value[0]
    length = flags & 0x07
    if flags & 0xE0 or length > 5:
        raise OscoreError("OSCORE option flags 0x%02x use reserved bits or a Partial IV over 5 bytes" % flags)
    if flags & 0x10:
        raise OscoreError("this node's context has no kid context; the answer carries one")
    if 1 + length > len(value):
        raise OscoreError("the OSCORE option's Partial IV runs past its end")
    piv = bytes(value[1 : 1 + length]) if length else None
    kid = bytes(value[1 + length :]) if flags & 0x08 else None
    if not flags & 0x08 and len(value) > 1 + length:
        raise OscoreError("the OSCORE option holds bytes after its Partial IV without a kid flag")
    return piv, kid


# --- the sequence record --------------------------------------------------------------

def _check(data):
    return hashlib.sha256(data).digest()[:4]


class Context:
    """One node's side of its OSCORE context, loaded from `path` (node.oscore); see the module docstring."""

    def __init__(self, path, keys, reserve=RESERVE):
        """keys: (sender id, recipient id, sender key, recipient key, common IV), as oscorekeys.load gives them."""
        self.path = path
        self.reserve_count = reserve
        self.sender_id, self.recipient_id, self.sender_key, self.recipient_key, self.common_iv = keys
        try:
            with open(path, "rb") as file:
                slots = []
                for offset in SLOT_OFFSETS:
                    file.seek(offset)
                    slots.append(file.read(_SLOT_BYTES))
        except OSError as error:
            raise StorageError("cannot read %s: %s" % (path, error))
        self.generation = 0
        self.ceiling = 0  # every sender sequence number below it may have been used
        self.lender_top = 0  # the lender's highest Partial IV seen, + 1 (0: none)
        self.lender_bits = 0  # bit i: lender_top - 2 - i seen
        self.fresh = True
        best = -1
        empty = 0
        for slot in slots:
            fields = self._unpack(slot)
            if fields is None:
                empty += not slot.strip(b"\x00")
            elif fields[1] > best:
                best = fields[1]
                _, self.generation, self.ceiling, self.lender_top, self.lender_bits = fields
                self.fresh = False
        # Nothing is handed out before both slots hold a record (`_establish`): so an empty slot beside a damaged one
        # is a first save the power cut short, and two damaged slots are a lost record.
        if self.fresh and not empty:
            raise StorageError("both sequence slots of %s are damaged: refusing to send rather than reuse a nonce; "
                               "re-provision the node's OSCORE context" % path)
        self.next_seq = self.ceiling  # what this run hands out; nothing is reserved for it yet
        self.limit = self.ceiling
        self.saves = 0

    @staticmethod
    def _unpack(slot):
        if len(slot) < _SLOT_BYTES or slot[:4] != _SLOT_MAGIC or _check(slot[: _SLOT_BYTES - 4]) != slot[_SLOT_BYTES - 4 :]:
            return None
        return struct.unpack(_SLOT, slot[: _SLOT_BYTES - 4])

    def save(self):
        """Write the record (ceiling = self.limit, the lender window) into the slot the last save did not use."""
        self.generation += 1
        body = struct.pack(_SLOT, _SLOT_MAGIC, self.generation, self.limit, self.lender_top, self.lender_bits)
        try:
            with open(self.path, "r+b") as file:
                file.seek(SLOT_OFFSETS[self.generation % 2])
                file.write(body + _check(body))
        except OSError as error:
            raise StorageError("cannot save the OSCORE sequence record in %s: %s" % (self.path, error))
        self.saves += 1
        self.fresh = False

    def next_sequence(self):
        """A sender sequence number never used before: reserved in flash (a save) before it is handed out."""
        if self.next_seq >= self.limit:
            if self.next_seq + self.reserve_count > MAX_SEQ:
                raise OscoreError("the sender sequence numbers of this context are used up: re-provision the node")
            self.limit = self.next_seq + self.reserve_count
            if self.fresh:
                self.save()  # a new record goes into both slots before its first number is used
            self.save()
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq

    # --- messages ---

    def protect(self, plaintext):
        """(OSCORE option value, ciphertext, request) for a request's plaintext (code, class E options, payload)."""
        piv = partial_iv(self.next_sequence())
        request = (piv, nonce(self.common_iv, self.sender_id, piv), aad(self.sender_id, piv))
        return option_value(piv, self.sender_id), ccm_encrypt(self.sender_key, request[1], plaintext, request[2]), request

    def unprotect(self, option, ciphertext, request):
        """The plaintext of a response to `request` (from protect); OscoreError when it is not the lender's answer to it."""
        piv, kid = parse_option(option)
        if kid is not None and kid != self.recipient_id:
            raise OscoreError("the response names kid %r, not the lender's %r" % (kid, self.recipient_id))
        if piv is None:
            return ccm_decrypt(self.recipient_key, request[1], ciphertext, request[2])
        seq = 0
        for byte in piv:
            seq = seq << 8 | byte
        if not self._fresh(seq):
            raise OscoreError("the lender's Partial IV %d was seen already: a replayed response" % seq)
        plain = ccm_decrypt(self.recipient_key, nonce(self.common_iv, self.recipient_id, piv), ciphertext, request[2])
        self._mark(seq)
        return plain

    def _fresh(self, seq):
        if seq >= self.lender_top:
            return True
        behind = self.lender_top - 1 - seq
        return 0 < behind <= WINDOW and not self.lender_bits >> (behind - 1) & 1

    def _mark(self, seq):
        """Record a verified lender Partial IV (saved with the next reservation: no flash write of its own)."""
        if seq >= self.lender_top:
            shift = seq + 1 - self.lender_top
            bits = (self.lender_bits << shift) | (1 << (shift - 1)) if self.lender_top else 0
            self.lender_bits = bits & 0xFFFFFFFF if shift <= WINDOW else 0
            self.lender_top = seq + 1
        else:
            self.lender_bits |= 1 << (self.lender_top - 2 - seq)
