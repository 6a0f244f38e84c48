"""SHA-512 on the node matches FIPS 180-4 and an independent implementation, block boundaries included."""

from check import equal, raises, tohex
from sha512 import _IV, _K, sha512

ABC = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
EMPTY = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
MESSAGE_896 = (
    b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
    b"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
)
DIGEST_896 = "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909"

# Digests of bytes(i * 7 & 0xFF for i in range(n)) from CPython's hashlib (OpenSSL):
# lengths either side of the 112-byte padding limit and of the 128-byte block.
PATTERN_DIGESTS = {
    111: "d2026b9857418e96d800f55017d1c1566c027453ff240da88f0a25558fabf5d6ffbe00bb14bc04f120af1cac53f21cb4a81765140b9249f52aaab4935079dd94",
    112: "4dc754b8985c03b8015b1efd61af5c05828b6d07eecda8d90dd5863f7704bd375905932f2fbdeb4ee1b754a7778e4a0327e7d75b71ae95d1f619136e27564467",
    127: "78de13cc28717e3ee7a3cb21b2ecac6d201f32f4a81bc1becdf9de5126e1a0139e25784aeb8baf327cc32f98d54d20e80e61d4d6bff5b37872fdaa645a4f3886",
    128: "6e7f10bc87eacc3e98014eaade39e273285ba13c79231361c24c304a8d409018f543a28847fcc829b87fdde605caa5ab5fdb00e296737fa4687d5ee8d130ceea",
    129: "cdc5b3e2f22ed03935760389c88672f8b3c867503aff012d5f9653e426c9b530e091356459108edadc8e09a444a50415b30d38f9d75cb8c456fec0ae3ca6901f",
    239: "d29cefaac62d3e8acd367abe0804c702a4848773ada2ad537619bc5c29a3a1f0c7d58c639638ede6869cf43536bb0530c2e8cee6b29ac3999e1216b6e88bab4f",
    240: "44f1b40dcf17562fc7119b65ea16035838ccb0438092ef3c7ba8011fda5448d6ccff715c5d17e4e399154938c8e89be6cf724018868cac11f383709af4e0d0e5",
    255: "cca5916a9770c125f68452214ffea2765ee9ce72ff6893df172d649c9c85e3bbb008ebe2cd3f2971b9685ece1b2de4a405ff50410655623b84bb430c5a852931",
    256: "ca6e7d0c2e4ae8774b65b1353a44154f9858ff2c6eb8c50c645eb37b39e37ad98184883dddacf1557a791307ad592e31e9d824c2c3e2da33b0f5e5a90d779316",
}


def _pattern(length):
    return bytes(i * 7 & 0xFF for i in range(length))


def test_sha512_of_abc_is_the_fips_180_4_one_block_example():
    equal(sha512(b"abc").hexdigest(), ABC)


def test_sha512_of_the_empty_message_is_the_fips_180_4_value():
    equal(sha512().hexdigest(), EMPTY)
    equal(tohex(sha512(b"").digest()), EMPTY)


def test_sha512_of_the_896_bit_message_is_the_fips_180_4_two_block_example():
    equal(len(MESSAGE_896) * 8, 896)
    equal(sha512(MESSAGE_896).hexdigest(), DIGEST_896)


def test_sha512_matches_openssl_either_side_of_the_padding_and_block_boundaries():
    for length, expected in PATTERN_DIGESTS.items():
        equal(sha512(_pattern(length)).hexdigest(), expected, "length %d" % length)


def test_feeding_a_message_in_pieces_gives_the_one_shot_digest():
    message = _pattern(256)
    for first_cut in (0, 1, 111, 112, 127, 128, 129, 200):
        for second_cut in (first_cut, first_cut + 1, 255, 256):
            if second_cut < first_cut:
                continue
            hasher = sha512(message[:first_cut])
            hasher.update(memoryview(message)[first_cut:second_cut])
            hasher.update(bytearray(message[second_cut:]))
            equal(hasher.hexdigest(), PATTERN_DIGESTS[256], "cuts %d, %d" % (first_cut, second_cut))


def test_digest_leaves_the_hash_usable_for_more_data():
    hasher = sha512(b"ab")
    hasher.digest()
    hasher.update(b"c")
    equal(hasher.hexdigest(), ABC)
    equal(hasher.hexdigest(), ABC)


def _integer_root(number, degree):
    bits = len("%x" % number) * 4  # MicroPython's int has no bit_length(); any upper bound will do
    root = 1 << ((bits + degree - 1) // degree)
    while True:
        better = ((degree - 1) * root + number // root ** (degree - 1)) // degree
        if better >= root:
            return root
        root = better


def _primes(count):
    found = []
    candidate = 2
    while len(found) < count:
        if all(candidate % prime for prime in found):
            found.append(candidate)
        candidate += 1
    return found


def test_round_constants_are_the_cube_roots_of_the_first_80_primes():
    mask = (1 << 64) - 1
    for index, prime in enumerate(_primes(80)):
        equal(_K[index], _integer_root(prime << 192, 3) & mask, "K[%d]" % index)


def test_initial_state_is_the_square_roots_of_the_first_8_primes():
    mask = (1 << 64) - 1
    for index, prime in enumerate(_primes(8)):
        equal(_IV[index], _integer_root(prime << 128, 2) & mask, "IV[%d]" % index)


def test_hashing_text_is_refused_with_a_clear_error():
    error = raises(TypeError, sha512, "abc")
    assert "bytes" in str(error), str(error)
