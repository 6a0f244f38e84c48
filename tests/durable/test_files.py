"""Atomic writes and sd_notify: a file is the old one or the new one, whole; systemd hears the daemon."""
import os
import socket
import stat

import pytest

from durable import files, sdnotify


def test_an_atomic_write_replaces_the_file_with_the_exact_mode_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_bytes(b"old")
    inode = path.stat().st_ino
    old = os.umask(0o077)
    try:
        files.atomic_write(path, b"new\n", 0o640)
    finally:
        os.umask(old)
    assert path.read_bytes() == b"new\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert [p.name for p in tmp_path.iterdir()] == ["agent.toml"]


def test_a_failed_write_keeps_the_old_file_whole_and_fsyncs_the_directory_when_it_succeeds(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    files.atomic_write(path, b"old")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    files.atomic_write(path, b"new")
    assert synced == ["file", "dir"]

    def power_fails_before_the_rename(source, target):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", power_fails_before_the_rename)
    with pytest.raises(OSError):
        files.atomic_write(path, b"newer")
    with pytest.raises(OSError):
        files.atomic_write(path, b"newer", temporary=tmp_path / "state.json.tmp")
    monkeypatch.undo()
    assert path.read_bytes() == b"new"
    # the per-process temporary is removed; a fixed one is left for its owner, as a power cut would leave it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.json.tmp"]


def test_a_private_file_is_created_exclusively_with_mode_0600(tmp_path):
    path = tmp_path / "secret.json"
    old = os.umask(0)
    try:
        files.create_private(path, b"{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == b"{}\n"
    with pytest.raises(FileExistsError):
        files.create_private(path, b"again")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        files.create_private(tmp_path / "link", b"through a link")
    assert not (tmp_path / "elsewhere").exists()


def test_sd_notify_sends_one_datagram_to_systemd_and_is_a_no_op_without_it(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert sdnotify.notify("READY=1") is True
        assert listener.recv(64) == b"READY=1"
    with pytest.raises(OSError):  # nobody listens any more: the caller decides whether that matters
        sdnotify.notify("WATCHDOG=1")
