"""OSCORE security contexts: enrollment writes both sides privately, loading refuses what others can read,
the installed cbor2 reproduces RFC 8613's test vectors, and the lender refuses plain CoAP unless insecure."""
from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import aiocoap
import pytest
from aiocoap.message import Direction
from aiocoap.numbers import codes

from agent.exc import SecurityContextError, SecurityContextPermissionError
from agent.uplink import open_security_context
from durable.exc import OscoreContextExistsError, OscoreContextInUseError, OscoreContextPermissionError
from durable.oscore import ContextParameters, close_context, open_context, read_parameters, write_context
from lender.exc import LenderError, OscoreContextInvalidError
from lender.enrollment.contexts import LenderCredentials, create_context_pair
from tests.kit.uplink import DEVICE, AckLender, chain
from telemetry import cbor


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_enrollment_writes_matching_private_sides_for_lender_and_device(tmp_path):
    device_side = create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "device")
    lender_side = read_parameters(tmp_path / "lender" / DEVICE)
    assert read_parameters(tmp_path / "device") == device_side == lender_side.for_peer()
    assert device_side.sender_id == b"\x01" and device_side.recipient_id == b""
    assert len(device_side.master_secret) == 32 and len(device_side.master_salt) == 8
    for side in (tmp_path / "lender" / DEVICE, tmp_path / "device"):
        assert mode(side) == 0o700
        assert sorted(p.name for p in side.iterdir()) == ["secret.json", "settings.json"]
        assert {mode(p) for p in side.iterdir()} == {0o600}
    assert "master_secret" not in repr(device_side) and device_side.master_secret.hex() not in repr(device_side)


def test_each_device_gets_its_own_oscore_id_and_secret(tmp_path):
    first = create_context_pair(tmp_path / "lender", "gw-1", tmp_path / "d1")
    second = create_context_pair(tmp_path / "lender", "gw-2", tmp_path / "d2")
    assert (first.sender_id, second.sender_id) == (b"\x01", b"\x02")
    assert first.master_secret != second.master_secret and first.master_salt != second.master_salt


def test_an_existing_context_is_never_overwritten(tmp_path):
    params = ContextParameters.generate(b"\x01", b"")
    write_context(tmp_path / "ctx", params)
    before = (tmp_path / "ctx" / "secret.json").read_bytes()
    with pytest.raises(OscoreContextExistsError):
        write_context(tmp_path / "ctx", ContextParameters.generate(b"\x01", b""))
    assert (tmp_path / "ctx" / "secret.json").read_bytes() == before
    with pytest.raises(FileExistsError):  # the leaf is also the builtin
        create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "ctx")
    assert not (tmp_path / "lender" / DEVICE).exists()


def test_enrollment_that_cannot_write_the_device_side_leaves_no_lender_side(tmp_path):
    (tmp_path / "not-a-dir").write_text("a file where the device directory's parent should be")
    with pytest.raises(OSError):
        create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "not-a-dir" / "device")
    assert [p.name for p in (tmp_path / "lender").iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize("device_id", ["", ".hidden", "../escape", "a/b", "x" * 65, "gw 1", "-x"])
def test_a_device_id_that_is_not_a_safe_directory_name_is_refused(tmp_path, device_id):
    with pytest.raises(OscoreContextInvalidError):
        create_context_pair(tmp_path / "lender", device_id, tmp_path / "device")


def test_parameters_that_break_rfc8613_are_refused():
    with pytest.raises(ValueError):
        ContextParameters(b"\x01" * 8, b"", os.urandom(32), b"")  # id longer than 7 bytes
    with pytest.raises(ValueError):
        ContextParameters(b"\x01", b"\x01", os.urandom(32), b"")  # same id both ways
    with pytest.raises(ValueError):
        ContextParameters(b"\x01", b"", os.urandom(8), b"")  # short secret


@pytest.mark.parametrize("loosen", ["dir", "settings.json", "secret.json"])
def test_a_context_others_can_read_is_refused_by_lender_and_agent(tmp_path, loosen):
    create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "device")
    for side in (tmp_path / "lender" / DEVICE, tmp_path / "device"):
        target = side if loosen == "dir" else side / loosen
        os.chmod(target, 0o755 if loosen == "dir" else 0o644)
    with pytest.raises(OscoreContextPermissionError):
        open_context(tmp_path / "lender" / DEVICE)
    with pytest.raises(SecurityContextPermissionError):
        open_security_context(tmp_path / "device")
    with pytest.raises(PermissionError):
        open_security_context(tmp_path / "device")


def test_one_context_cannot_be_used_twice_at_once(tmp_path):
    create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "device")
    first = open_security_context(tmp_path / "device")
    try:
        with pytest.raises(SecurityContextError):
            open_security_context(tmp_path / "device")
    finally:
        close_context(first)
    close_context(open_security_context(tmp_path / "device"))  # free again after a clean close
    lender_first = open_context(tmp_path / "lender" / DEVICE)
    try:
        with pytest.raises(OscoreContextInUseError):
            open_context(tmp_path / "lender" / DEVICE)
    finally:
        close_context(lender_first)


def test_a_broken_device_context_is_skipped_and_the_others_still_load(tmp_path, caplog):
    create_context_pair(tmp_path / "lender", "gw-1", tmp_path / "d1")
    create_context_pair(tmp_path / "lender", "gw-2", tmp_path / "d2")
    (tmp_path / "lender" / "gw-1" / "secret.json").write_text("{not json")
    credentials = LenderCredentials.load(tmp_path / "lender")
    try:
        assert "gw-2" in credentials and "gw-1" not in credentials
        assert "gw-1" in caplog.text
    finally:
        credentials.close()
    assert issubclass(OscoreContextInvalidError, LenderError)


def test_sequence_reservations_are_fsynced_including_the_directory_entry(tmp_path, monkeypatch):
    create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "device")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    context = open_security_context(tmp_path / "device")
    monkeypatch.setattr(os, "fsync", recording_fsync)
    context.new_sequence_number()  # the first number past the (empty) reservation: a store
    close_context(context)
    monkeypatch.undo()
    assert synced[:2] == ["file", "dir"]
    assert json.loads((tmp_path / "device" / "sequence.json").read_text())["next-to-send"] == 1
    assert mode(tmp_path / "device" / "sequence.json") == 0o600


# RFC 8613 Appendix C.1.1, C.4 and C.7: the installed aiocoap + cbor2 must produce these bytes.
RFC8613_SECRET = "0102030405060708090a0b0c0d0e0f10"
RFC8613_SALT = "9e7ca92223786340"
C4_PLAIN = "44015d1f00003974396c6f63616c686f737483747631"
C4_PROTECTED = "44025d1f00003974396c6f63616c686f7374620914ff612f1092f1776f1c1668b3825e"
C7_PLAIN = "64455d1f00003974ff48656c6c6f20576f726c6421"
C7_PROTECTED = "64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106"


def test_oscore_with_the_installed_cbor2_reproduces_the_rfc8613_test_vectors(tmp_path):
    def context(name, sender, recipient, next_seq):
        base = tmp_path / name
        write_context(base, ContextParameters(bytes.fromhex(sender), bytes.fromhex(recipient),
                                              bytes.fromhex(RFC8613_SECRET), bytes.fromhex(RFC8613_SALT)))
        fd = os.open(base / "sequence.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, json.dumps({"next-to-send": next_seq, "received": {"index": 0, "bitfield": 0}}).encode())
        os.close(fd)
        return open_context(base)

    client, server = context("client", "", "01", 20), context("server", "01", "", 0)
    try:
        request = aiocoap.Message.decode(bytes.fromhex(C4_PLAIN))
        request.direction = Direction.OUTGOING
        protected, _ = client.protect(request)
        protected.mid, protected.token, protected.mtype = request.mid, request.token, request.mtype
        assert protected.encode().hex() == C4_PROTECTED

        incoming = aiocoap.Message.decode(bytes.fromhex(C4_PROTECTED))
        incoming.direction = Direction.INCOMING
        inner, request_id = server.unprotect(incoming)
        assert inner.code == codes.GET and inner.opt.uri_path == ("tv1",)

        response = aiocoap.Message.decode(bytes.fromhex(C7_PLAIN))
        response.direction = Direction.OUTGOING
        protected_response, _ = server.protect(response, request_id)
        protected_response.mid, protected_response.token = response.mid, response.token
        protected_response.mtype = response.mtype
        assert protected_response.encode().hex() == C7_PROTECTED
    finally:
        close_context(client)
        close_context(server)


@pytest.mark.parametrize("insecure", [False, True])
def test_plain_coap_is_refused_unless_the_lender_is_explicitly_insecure(tmp_path, insecure, caplog):
    create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "device")

    async def scenario():
        credentials = LenderCredentials.load(tmp_path / "lender")
        lender = await AckLender(credentials=credentials, insecure=insecure).start()
        client = await aiocoap.Context.create_client_context()
        try:
            body = cbor.encode([chain(1)[0].raw])
            request = aiocoap.Message(code=codes.POST, uri=lender.uri + "/t", payload=body, content_format=60)
            return await client.request(request).response, lender
        finally:
            await client.shutdown()
            await lender.stop()
            credentials.close()

    response, lender = asyncio.run(scenario())
    if insecure:
        assert response.code == codes.CHANGED and len(lender.stored) == 1
        assert lender.batches[0].device is None  # no OSCORE identity on a plain request
        assert "insecure" in caplog.text
    else:
        assert response.code == codes.UNAUTHORIZED and lender.stored == {}
