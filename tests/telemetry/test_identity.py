"""Device identity: the seed never leaks, and the kid is fixed (key files: tests/durable/test_keyfile.py)."""
import logging

import pytest

from telemetry.exc import IdentityError
from telemetry.identity import Identity, kid_of


def test_the_seed_never_appears_in_repr_logs_or_pickles(caplog):
    seed = bytes(range(32))
    identity = Identity(seed)
    logging.getLogger("test").warning("identity %r %s", identity, identity)
    for text in (repr(identity), str(identity), caplog.text):
        assert seed.hex() not in text and str(seed) not in text
    assert identity.kid.hex() in repr(identity)
    with pytest.raises(TypeError):
        __import__("pickle").dumps(identity)


def test_kid_is_the_first_8_bytes_of_sha256_of_the_public_key():
    identity = Identity(bytes(32))
    assert identity.kid == __import__("hashlib").sha256(identity.public_key).digest()[:8] == kid_of(identity.public_key)


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), "x" * 32])
def test_an_identity_is_built_only_from_a_32_byte_seed(seed):
    with pytest.raises(IdentityError, match="32 bytes"):
        Identity(seed)
