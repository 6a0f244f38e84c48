"""Key files: private (0600 whatever the umask), created atomically and exclusively, refused when others can read them."""
import os
import stat

import pytest

from durable.exc import KeyFileError, KeyFileExistsError, KeyFilePermissionError
from durable.keyfile import create_key, read_key, write_key
from telemetry.identity import Identity


def test_a_saved_key_file_has_mode_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        identity = Identity(create_key(tmp_path / "device.key"))
    finally:
        os.umask(old)
    info = os.stat(tmp_path / "device.key")
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_size == 32
    assert Identity(read_key(tmp_path / "device.key")).public_key == identity.public_key
    assert [p.name for p in tmp_path.iterdir()] == ["device.key"]  # no temporary left behind


def test_loading_refuses_a_key_file_others_can_read_and_says_how_to_fix_it(tmp_path):
    path = tmp_path / "device.key"
    create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFilePermissionError, match=f"chmod 600 {path}") as caught:
        read_key(path)
    assert isinstance(caught.value, PermissionError)


def test_saving_never_overwrites_an_existing_identity_unless_asked(tmp_path):
    path = tmp_path / "device.key"
    first = Identity(create_key(path))
    with pytest.raises(KeyFileExistsError, match="exists already") as caught:
        create_key(path)
    assert isinstance(caught.value, FileExistsError)
    assert Identity(read_key(path)).public_key == first.public_key
    second = Identity(create_key(path, replace=True))
    assert Identity(read_key(path)).public_key == second.public_key != first.public_key
    third = bytes(range(32))
    write_key(path, third, replace=True)
    assert read_key(path) == third


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"x" * 33, b"x" * 64])
def test_a_key_file_of_the_wrong_size_is_refused(tmp_path, content):
    path = tmp_path / "device.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="bytes"):
        read_key(path)


def test_a_symlinked_or_missing_key_file_is_refused(tmp_path):
    target = tmp_path / "real.key"
    create_key(target)
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(KeyFileError, match="symlink"):
        read_key(tmp_path / "link.key")
    with pytest.raises(KeyFileError, match="does not exist"):
        read_key(tmp_path / "absent.key")


def test_the_key_never_appears_in_an_error_message(tmp_path):
    path = tmp_path / "device.key"
    key = create_key(path)
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError) as caught:
        read_key(path)
    assert key.hex() not in str(caught.value) and str(key) not in str(caught.value)
