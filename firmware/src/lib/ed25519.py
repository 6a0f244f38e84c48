"""Ed25519 signatures (RFC 8032 §5.1) in pure MicroPython: the node signs every evidence envelope with its device key.

Signing costs one fixed-base scalar multiplication, done with a comb (four
teeth 64 bits apart, two sub-combs 32 bits apart) over the 32 precomputed
points in ed25519_table: 31 doublings and 64 mixed additions instead of about
253 doublings and 127 additions, for 3 KB of flash. The comb adds a table
point at every step (the identity for a zero digit), so the sequence of field
operations does not depend on the secret; the timing of MicroPython's mpz
arithmetic still can, which is the accepted limit of a pure-Python signer (an
attacker has to time the node's CPU, not its radio).

Verification is here for the node's own tests and for keys it is handed; it
is slow (variable-base double-and-add) and not used on the signing path.
"""

import os

import micropython
from ed25519_table import COMB
from sha512 import sha512

_P = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED  # 2**255 - 19
_L = 0x1000000000000000000000000000000014DEF9DEA2F79CD65812631A5CF5D3ED  # group order
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
_D2 = 16295367250680780974490674513165176452449235426866156013048779062215315747161
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
_BASE = (
    15112221349535400772501151409588531511454012693041857206046113283949847762202,
    46316835694926478169428394003475163141307993866256225615783033603165251855960,
    1,
    46827403850823179245072216630277197565144205554125654976674165829533817101731,
)
_IDENTITY = (0, 1, 1, 0)


# Entries are decoded at each lookup: holding the 96 table ints costs ~8 KB of heap.
_COMB = memoryview(COMB)


@micropython.native
def _base_multiple(scalar):
    """scalar * B for 0 <= scalar < 2**256, in extended coordinates (X, Y, Z, T)."""
    p = _P
    table = _COMB  # entry = (y+x, y-x, 2*d*x*y), 32 bytes little-endian each
    bits = scalar.to_bytes(32, "little")
    x, y, z, t = 0, 1, 1, 0
    for k in range(31, -1, -1):
        if k != 31:
            # Doubling, dbl-2008-hwcd with a = -1 (8 multiplications).
            a = x * x % p
            b = y * y % p
            c = 2 * z * z % p
            s = x + y
            e = (s * s - a - b) % p
            g = b - a
            f = g - c
            h = -a - b
            x = e * f % p
            y = g * h % p
            z = f * g % p
            t = e * h % p
        for sub in (32, 0):
            n = k + sub
            digit = (
                ((bits[n >> 3] >> (n & 7)) & 1)
                | (((bits[(n + 64) >> 3] >> (n & 7)) & 1) << 1)
                | (((bits[(n + 128) >> 3] >> (n & 7)) & 1) << 2)
                | (((bits[(n + 192) >> 3] >> (n & 7)) & 1) << 3)
            )
            entry = ((sub >> 1) + digit) * 96
            ypx = int.from_bytes(table[entry : entry + 32], "little")
            ymx = int.from_bytes(table[entry + 32 : entry + 64], "little")
            xy2d = int.from_bytes(table[entry + 64 : entry + 96], "little")
            # Mixed addition with a precomputed point, madd-2008-hwcd-3 (7 multiplications).
            a = (y - x) * ymx % p
            b = (y + x) * ypx % p
            c = t * xy2d % p
            d = 2 * z
            e = b - a
            f = d - c
            g = d + c
            h = b + a
            x = e * f % p
            y = g * h % p
            z = f * g % p
            t = e * h % p
    return x, y, z, t


def _add(p1, p2):
    """p1 + p2 in extended coordinates (add-2008-hwcd-3, complete: also doubles)."""
    p = _P
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % p
    b = (y1 + x1) * (y2 + x2) % p
    c = t1 * _D2 * t2 % p
    d = 2 * z1 * z2 % p
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return e * f % p, g * h % p, f * g % p, e * h % p


def _multiple(scalar, point):
    """scalar * point by double-and-add: any base point, for verification only."""
    result = _IDENTITY
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _encode(point):
    x, y, z, _ = point
    z_inverse = pow(z, _P - 2, _P)
    x = x * z_inverse % _P
    y = y * z_inverse % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode(encoded):
    """The point a 32-byte encoding names (RFC 8032 §5.1.3), or None if it names none."""
    if len(encoded) != 32:
        return None
    y = int.from_bytes(encoded, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    vxx = v * x * x % _P
    if vxx == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif vxx != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y, 1, x * y % _P


def _hash_to_scalar(*parts):
    digest = sha512()
    for part in parts:
        digest.update(part)
    return int.from_bytes(digest.digest(), "little") % _L


class SigningKey:
    """An Ed25519 private key made from its 32-byte seed; public_key is its 32-byte public key."""

    def __init__(self, seed):
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes, got %r" % (seed,))
        expanded = sha512(seed).digest()
        scalar = int.from_bytes(expanded[:32], "little")
        # RFC 8032 §5.1.5: clear the low 3 bits and bit 255, set bit 254.
        self._scalar = (scalar & ((1 << 254) - 8)) | (1 << 254)
        self._prefix = expanded[32:]
        self.public_key = _encode(_base_multiple(self._scalar))

    def sign(self, message):
        """The 64-byte signature R || S of message (bytes) per RFC 8032 §5.1.6."""
        r = _hash_to_scalar(self._prefix, message)
        encoded_r = _encode(_base_multiple(r))
        k = _hash_to_scalar(encoded_r, self.public_key, message)
        s = (r + k * self._scalar) % _L
        return encoded_r + s.to_bytes(32, "little")


def generate():
    """A new SigningKey from the board's hardware random number generator.

    Returns (seed, key): the seed is what the node stores. There is no
    fallback: a board without os.urandom cannot make a key.
    """
    urandom = getattr(os, "urandom", None)
    if urandom is None:
        raise RuntimeError("os.urandom is missing on this board: no hardware RNG, so no key is generated")
    seed = urandom(32)
    if len(seed) != 32:
        raise RuntimeError("os.urandom(32) returned %d bytes: refusing to make a key from it" % len(seed))
    return seed, SigningKey(seed)


def verify(public_key, message, signature):
    """True only if signature is a valid Ed25519 signature of message under public_key."""
    if len(signature) != 64:
        return False
    point_a = _decode(public_key)
    if point_a is None or _decode(signature[:32]) is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    k = _hash_to_scalar(signature[:32], public_key, message)
    x, y, z, t = _multiple(k, point_a)
    # R must equal [s]B - [k]A, compared through the canonical encoding.
    check = _add(_base_multiple(s), ((-x) % _P, y, z, (-t) % _P))
    return _encode(check) == bytes(signature[:32])
