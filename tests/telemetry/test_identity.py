"""Device identity: key files are private, atomic, and never leak the seed."""
import logging
import os
import stat

import pytest

from telemetry.exc import IdentityError, KeyFilePermissionError
from telemetry.identity import Identity, kid_of


def test_a_saved_key_file_has_mode_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        identity = Identity.generate()
        identity.save(tmp_path / "device.key")
    finally:
        os.umask(old)
    info = os.stat(tmp_path / "device.key")
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_size == 32
    assert Identity.load(tmp_path / "device.key").public_key == identity.public_key
    assert [p.name for p in tmp_path.iterdir()] == ["device.key"]  # no temporary left behind


def test_loading_refuses_a_key_file_others_can_read_and_says_how_to_fix_it(tmp_path):
    path = tmp_path / "device.key"
    Identity.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFilePermissionError, match=f"chmod 600 {path}") as caught:
        Identity.load(path)
    assert isinstance(caught.value, PermissionError)


def test_saving_never_overwrites_an_existing_identity_unless_asked(tmp_path):
    path = tmp_path / "device.key"
    first, second = Identity.generate(), Identity.generate()
    first.save(path)
    with pytest.raises(IdentityError, match="exists already"):
        second.save(path)
    assert Identity.load(path).public_key == first.public_key
    second.save(path, replace=True)
    assert Identity.load(path).public_key == second.public_key


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"x" * 33, b"x" * 64])
def test_a_key_file_of_the_wrong_size_is_refused(tmp_path, content):
    path = tmp_path / "device.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(IdentityError, match="bytes"):
        Identity.load(path)


def test_a_symlinked_or_missing_key_file_is_refused(tmp_path):
    target = tmp_path / "real.key"
    Identity.generate().save(target)
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(IdentityError, match="symlink"):
        Identity.load(tmp_path / "link.key")
    with pytest.raises(IdentityError, match="does not exist"):
        Identity.load(tmp_path / "absent.key")


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
