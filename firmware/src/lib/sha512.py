"""SHA-512 (FIPS 180-4) in pure MicroPython, for the node's Ed25519 signatures.

MicroPython's hashlib offers only SHA-256, and Ed25519 (RFC 8032) is defined
over SHA-512. Words are plain Python ints masked to 64 bits: on ESP32/RP2040
(and for values >= 2**62 on 64-bit hosts) they are mpz big ints, which is
correct on every port; splitting into 32-bit halves would not help there
because a 32-bit MCU's small ints hold only 31 bits.
"""

import struct

import micropython

_MASK = 0xFFFFFFFFFFFFFFFF

# FIPS 180-4 §4.2.3 and §5.3.5: the first 64 bits of the fractional parts of
# the cube roots of the first 80 primes, and of the square roots of the first
# 8 primes (firmware/tests/test_sha512.py re-derives both tables).
_K = (
    0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc,
    0x3956c25bf348b538, 0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118,
    0xd807aa98a3030242, 0x12835b0145706fbe, 0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235, 0xc19bf174cf692694,
    0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
    0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5,
    0x983e5152ee66dfab, 0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2, 0xd5a79147930aa725, 0x06ca6351e003826f, 0x142929670a0e6e70,
    0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed, 0x53380d139d95b3df,
    0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
    0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30,
    0xd192e819d6ef5218, 0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8, 0x1e376c085141ab53, 0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373, 0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b,
    0xca273eceea26619c, 0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178,
    0x06f067aa72176fba, 0x0a637dc5a2c898a6, 0x113f9804bef90dae, 0x1b710b35131c471b,
    0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc, 0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817,
)
_IV = (
    0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
    0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179,
)

# The message schedule, allocated once at import, while the heap is fresh: 80 words is one 320-byte block
# (640 on a 64-bit host) that a fragmented heap may not have free at signing time, even with kilobytes free
# in smaller holes (the vectors test hit exactly that). _compress is never re-entered: no threads, and a
# native function is not interrupted by the scheduler.
_W = [0] * 80


@micropython.native
def _compress(state, block):
    """Fold one 128-byte block into the eight-word state (FIPS 180-4 §6.4.2)."""
    mask = _MASK
    k = _K
    w = _W
    w[0:16] = struct.unpack(">16Q", block)
    for t in range(16, 80):
        x = w[t - 15]
        xx = x | (x << 64)  # a doubled word turns a rotation into one shift
        s0 = ((xx >> 1) ^ (xx >> 8) ^ (x >> 7)) & mask
        x = w[t - 2]
        xx = x | (x << 64)
        s1 = ((xx >> 19) ^ (xx >> 61) ^ (x >> 6)) & mask
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) & mask
    a, b, c, d, e, f, g, h = state
    for t in range(80):
        xx = e | (e << 64)
        t1 = h + (((xx >> 14) ^ (xx >> 18) ^ (xx >> 41)) & mask) + (g ^ (e & (f ^ g))) + k[t] + w[t]
        xx = a | (a << 64)
        t2 = (((xx >> 28) ^ (xx >> 34) ^ (xx >> 39)) & mask) + ((a & b) | (c & (a | b)))
        h = g
        g = f
        f = e
        e = (d + t1) & mask
        d = c
        c = b
        b = a
        a = (t1 + t2) & mask
    state[0] = (state[0] + a) & mask
    state[1] = (state[1] + b) & mask
    state[2] = (state[2] + c) & mask
    state[3] = (state[3] + d) & mask
    state[4] = (state[4] + e) & mask
    state[5] = (state[5] + f) & mask
    state[6] = (state[6] + g) & mask
    state[7] = (state[7] + h) & mask


class sha512:
    """A hashlib-style SHA-512 object: update() any number of times, then digest()."""

    digest_size = 64
    block_size = 128

    def __init__(self, data: bytes | bytearray | memoryview = b""):
        self._state = list(_IV)
        self._pending = b""
        self._length = 0
        if data:
            self.update(data)

    def update(self, data: bytes | bytearray | memoryview):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("sha512.update() takes bytes, not %s" % type(data).__name__)
        # Blocks are read through a memoryview of the caller's bytes: a message of a few hundred bytes (an envelope's
        # Sig_structure) is not copied, nor joined to the pending bytes, on a fragmented 128 KB heap.
        view = memoryview(data)
        self._length += len(view)
        pending = self._pending
        if pending:
            take = 128 - len(pending)
            if len(view) < take:
                self._pending = pending + bytes(view)
                return
            _compress(self._state, pending + bytes(view[:take]))
            view = view[take:]
        end = len(view) - len(view) % 128
        for offset in range(0, end, 128):
            _compress(self._state, view[offset : offset + 128])
        self._pending = bytes(view[end:])

    def digest(self):
        """The 64-byte digest of everything fed so far; the object stays usable."""
        state = list(self._state)
        bits = self._length * 8
        # FIPS 180-4 §5.1.2: a 1 bit, zeros, then the 128-bit message length.
        tail = self._pending + b"\x80" + bytes((111 - len(self._pending)) % 128)
        tail += struct.pack(">QQ", bits >> 64, bits & _MASK)
        for offset in range(0, len(tail), 128):
            _compress(state, tail[offset : offset + 128])
        return struct.pack(">8Q", *state)

    def hexdigest(self):
        return "".join("%02x" % byte for byte in self.digest())
