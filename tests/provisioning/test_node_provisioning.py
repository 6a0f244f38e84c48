"""A technician flashes and enrolls an NB-IoT node: raw REPL on a pty, real MicroPython, a real lender over CoAP."""
from __future__ import annotations

import json
import os
import subprocess

import nacl.signing
import pytest

from hil.sim.rawrepl import find_micropython
from lender.enrollment.technicians import TechnicianRegistry
from pledgewatch.cli import main as pledgewatch_main
from durable.oscore import read_parameters
from provisioning.flash import Firmware
from provisioning.node import node_context_file

from .conftest import FIRMWARE_SOURCE


@pytest.fixture
def node_site(site, board, tmp_path):
    (tmp_path / "node-settings.json").write_text(json.dumps({"interval_s": 900, "modem": {"model": "bc66"},
                                                             "sensors": {"tamper_pin": 4}}))
    return site, board


def provision_node(site, board, tmp_path, *extra: str) -> int:
    return pledgewatch_main(["provision", "node", "--port", board.path, "--device-id", "node-0042",
                             "--asset-file", str(site.site_file), "--node-config", str(tmp_path / "node-settings.json"),
                             "--profile", str(site.profile.path), "--pace", "0", "--timeout", "3",
                             "--save-request", str(tmp_path / "node-0042.request.cbor"), *extra])


def board_files(board):
    return {p.relative_to(board.root).as_posix(): p.read_bytes() for p in board.root.rglob("*") if p.is_file()}


def failure_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("pledgewatch provision")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_node_is_flashed_keyed_on_the_node_configured_and_enrolled(node_site, tmp_path, capsys):
    site, board = node_site
    site.lender.start()
    assert provision_node(site, board, tmp_path) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "(created on the node), enrolled" in out
    files = board_files(board)
    firmware = Firmware.from_source(FIRMWARE_SOURCE)
    assert all(files[f.path] == f.data for f in firmware.files)
    assert not any(name.startswith(".pw-staging") for name in files)
    seed = files["node.key"]
    assert len(seed) == 32 and "node.key.new" not in files
    public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
    with site.store() as store:
        device = store.device("node-0042")
    assert device.public_key == public_key and device.asset == "asset-7781" and device.oscore_context == "oscore/node-0042"
    # the node's side of the OSCORE context the lender made: written by the laptop, which opened the sealed answer
    lender_side = read_parameters(site.lender.data / "oscore" / "node-0042")
    assert files["node.oscore"] == node_context_file(lender_side.for_peer())
    assert "node.oscore.new" not in files and not any(lender_side.master_secret.hex() in c.code for c in board.received)
    # only the public key crossed the cable: the seed never appears in what the node printed
    assert not any(seed.hex() in code.code for code in board.received)
    record = json.loads((site.lender.data / "enroll" / "requests" / "node-0042.json").read_text())
    assert record["kind"] == "node" and record["hardware"]["modem_model"] == "bc66"
    # the firmware's own config loader accepts what was written, under real MicroPython
    check = subprocess.run([find_micropython(), "-c", "import config\nc, seed = config.load('.')\n"
                            "print(c.device, c.lender_host, c.lender_port, c.modem_model, c.tamper_pin, len(seed),"
                            " c.lender_key.hex())"],
                           cwd=board.root, env=dict(os.environ, MICROPYPATH="lib"), capture_output=True, text=True)
    assert check.stdout.split() == ["node-0042", "127.0.0.1", str(site.lender.port), "bc66", "4", "32",
                                    site.profile.lender_key.hex()], check.stderr  # the lender's commands pinned
    # ... and so does its OSCORE loader: the ids the lender allocated
    check = subprocess.run([find_micropython(), "-c", "import oscorekeys\nk = oscorekeys.load('node.oscore')\n"
                            "print('%s|%s|%d|%d' % (k[0].hex(), k[1].hex(), len(k[2]), len(k[4])))"],
                           cwd=board.root, env=dict(os.environ, MICROPYPATH="lib"), capture_output=True, text=True)
    expected = f"{lender_side.recipient_id.hex()}|{lender_side.sender_id.hex()}|16|13"
    assert check.stdout.strip() == expected, check.stdout + check.stderr


def test_reprovisioning_an_unlocked_bench_node_keeps_its_key_and_sends_no_unchanged_file(node_site, tmp_path, capsys):
    site, board = node_site
    site.lender.start()
    assert provision_node(site, board, tmp_path, "--leave-unlocked") == 0  # a locked node is erased instead
    seed = (board.root / "node.key").read_bytes()
    context = (board.root / "node.oscore").read_bytes()
    capsys.readouterr()
    assert provision_node(site, board, tmp_path, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["key"] == "kept" and result["files_sent"] == 0 and result["enrollment"] == "enrolled"
    assert (board.root / "node.key").read_bytes() == seed
    assert (board.root / "node.oscore").read_bytes() == context, "the node keeps its context and sequence record"


def test_a_node_not_answering_the_raw_repl_is_one_line_and_untouched(node_site, tmp_path, capsys):
    site, board = node_site
    site.lender.start()
    board.knobs.silent = True
    assert provision_node(site, board, tmp_path) == 1
    err = failure_line(capsys.readouterr().err)
    assert err.startswith(f"pledgewatch provision node: the device on {board.path} does not answer "
                          "MicroPython's raw REPL")
    assert board_files(board) == {}


def test_a_file_failing_its_read_back_hash_leaves_the_node_as_it_was(node_site, tmp_path, capsys):
    site, board = node_site
    site.lender.start()
    board.knobs.corrupt = r"^\.pw-staging/lib/sha512\.py$"
    assert provision_node(site, board, tmp_path) == 1
    err = failure_line(capsys.readouterr().err)
    assert err.startswith("pledgewatch provision node: lib/sha512.py: the board read back SHA-256")
    assert board_files(board) == {}
    with site.store() as store:
        assert store.devices() == []


def test_the_lender_rejecting_the_technician_leaves_the_node_as_it_was(node_site, tmp_path, capsys):
    site, board = node_site
    TechnicianRegistry(site.lender.data).revoke("tech-ana")
    site.lender.start()
    assert provision_node(site, board, tmp_path) == 1
    err = failure_line(capsys.readouterr().err)
    assert err.startswith("pledgewatch provision node: the lender refused the enrollment (4.03): technician "
                          "tech-ana was revoked")
    assert board_files(board) == {}


def test_a_node_provisioned_offline_is_enrolled_later_with_submit(node_site, tmp_path, capsys):
    site, board = node_site
    assert provision_node(site, board, tmp_path) == 0  # the lender is not running
    out = capsys.readouterr().out
    assert ", pending" in out and "pledgewatch provision submit" in out
    assert "node.key" in board_files(board) and "node.json" in board_files(board)
    assert "node.oscore" not in board_files(board), "no context until the lender answers"
    key_file = tmp_path / "node-0042.request.response.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    site.lender.start()
    assert pledgewatch_main(["provision", "submit", str(tmp_path / "node-0042.request.cbor"),
                             "--config", str(tmp_path / "no-gateway.toml"), "--profile", str(site.profile.path)]) == 0
    with site.store() as store:
        device = store.device("node-0042")
    assert device.public_key == bytes(nacl.signing.SigningKey((board.root / "node.key").read_bytes()).verify_key)
    assert "provision node" in capsys.readouterr().out
    # Back at the node: the same command installs the context the lender sealed into its answer.
    assert provision_node(site, board, tmp_path) == 0, capsys.readouterr().err
    lender_side = read_parameters(site.lender.data / "oscore" / "node-0042")
    assert (board.root / "node.oscore").read_bytes() == node_context_file(lender_side.for_peer())
    assert "enrolled" in capsys.readouterr().out
