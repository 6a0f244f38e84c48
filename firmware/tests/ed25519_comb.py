"""Derives the Ed25519 fixed-base comb table from the curve itself, so tests can check the table the firmware ships."""

import ed25519


def _affine(point):
    p = ed25519._P
    x, y, z, _ = point
    z_inverse = pow(z, p - 2, p)
    return x * z_inverse % p, y * z_inverse % p


def comb_entries():
    """Yields the 32 entries of ed25519_table.COMB, 96 bytes each: for sub-comb offsets
    0 and 32 and each 4-bit digit u, the sum of 2**(64*i + offset) * B over the set
    bits i of u, as (y+x, y-x, 2*d*x*y) little-endian."""
    p = ed25519._P
    for offset in (0, 32):
        teeth = [ed25519._multiple(1 << (64 * i + offset), ed25519._BASE) for i in range(4)]
        for digit in range(16):
            point = ed25519._IDENTITY
            for i in range(4):
                if digit >> i & 1:
                    point = ed25519._add(point, teeth[i])
            x, y = _affine(point)
            yield b"".join(value.to_bytes(32, "little") for value in ((y + x) % p, (y - x) % p, 2 * ed25519._D * x * y % p))


if __name__ == "__main__":
    # Prints the body of firmware/src/lib/ed25519_table.py (24 bytes a line).
    table = b"".join(comb_entries())
    for start in range(0, len(table), 24):
        print('    b"' + "".join("\\x%02x" % byte for byte in table[start : start + 24]) + '"')
