"""rotate-key end to end (issue 15): a running gateway and a real lender over CoAP with OSCORE; `lender rotate-key`
issues the command, the gateway hands over in its chain and keeps delivering with the new key over the same
OSCORE context, the export and the bundle verify offline across the rotation, and a copy of the old key signing
after the handover gets nothing accepted."""
import asyncio
import contextlib
import io
import json
import time

from agent.commands import CommandInbox
from durable.keyfile import read_key
from durable.keystore import DeviceKeys, create_device_key
from lender.enrollment import registration
from lender.enrollment.registration import DEVICE_CONTEXTS_DIR
from lender.evidence.log import lender_identity
from lender.evidence.store import SQLiteStore
from pledgewatch.cli import main
from telemetry import cbor
from telemetry.command import Command
from telemetry.envelope import Counters, seal
from telemetry.identity import Identity
from telemetry.rotation import handover_records
from telemetry.senml import Record
from tests.kit.agent import DEVICE, QUICK_UPLINK, build_agent, running, stored_at_lender
from tests.kit.lender import LenderThread, RawCoap


def lender_cli(*args) -> tuple[int, str]:
    """`pledgewatch lender ARGS` in this process (a subprocess each costs an interpreter start): (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["lender", *map(str, args)])
    return code, out.getvalue()


def test_a_rotation_over_oscore_is_followed_by_the_lender_and_by_an_offline_verify(tmp_path):
    data, home, etc = tmp_path / "lender", tmp_path / "agent", tmp_path / "etc"
    home.mkdir()
    enrolled = create_device_key(etc, "software")
    stolen = Identity(read_key(etc / "device.key"))   # a copy of the old key, taken before the rotation
    with SQLiteStore.open(data) as store:
        registration.register(store, data, DEVICE, enrolled.public_key, with_oscore=True)
        before = store.device(DEVICE)
    keys = DeviceKeys(etc)
    with LenderThread(data, insecure=True) as lender:
        inbox = CommandInbox(home, DEVICE, lender_identity(data).public_key, clock=time.time, keys=keys)
        agent = build_agent(home, identity=keys.open(), lender=f"coap://127.0.0.1:{lender.port}",
                            security_context=data / DEVICE_CONTEXTS_DIR / DEVICE, uplink=QUICK_UPLINK,
                            commands=inbox, command_poll=0.1)

        async def rotation():
            for value in (4.0, 4.1):
                agent.record([Record("temp", value=value, unit="Cel")])
            run = await asyncio.to_thread(lender_cli, "rotate-key", "--data", data, DEVICE, "--wait", 15, "--json",
                                          "--by", "staff-li")
            for value in (4.2, 4.3):   # signed by the new key, delivered over the same OSCORE context
                agent.record([Record("temp", value=value, unit="Cel")])
            head, deadline = agent.recorder.seq, time.monotonic() + 15
            while head not in {e.seq for e in stored_at_lender(data)} and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return run, head

        (code, printed), head = asyncio.run(running(agent, rotation, timeout=40))
        assert code == 0, printed
        answer = json.loads(printed)
        handover_seq, new = answer["handover_seq"], agent.identity
        assert answer["switched"] and answer["device"]["public_key_hex"] == new.public_key.hex()
        assert new.kid != enrolled.kid and keys.open().kid == new.kid

        # a copy of the old key, after the handover: its envelope and its own handover (to the thief's key,
        # answering the same command) are refused, over CoAP
        thief = Identity(bytes(range(7, 39)))
        with SQLiteStore.open(data) as store:
            (issued,) = [c for c in store.issued_commands(DEVICE) if c.kind == "rotate-key"]
        command = Command.verify(issued.raw, lender_identity(data).public_key)
        forged = [seal(stolen, device=DEVICE, boot=99, seq=head + 100 + n, prev=bytes(16), records=records,
                       counters=Counters(0, 0))
                  for n, records in enumerate(([Record("temp", value=20.0, unit="Cel")],
                                               handover_records(command, stolen.kid, thief, time.time())))]
        client = RawCoap(lender.port)
        try:
            client.request(cbor.encode([e.raw for e in forged]))
        finally:
            client.close()
    stored = stored_at_lender(data)
    assert {e.seq for e in stored} >= set(range(1, head + 1)) and all(e.seq <= head for e in stored)
    assert {e.kid for e in stored if e.seq <= handover_seq} == {enrolled.kid}
    assert {e.kid for e in stored if e.seq > handover_seq} == {new.kid}
    with SQLiteStore.open(data) as store:
        after = store.device(DEVICE)
        refused = store.quarantined(device=DEVICE)
    assert (after.kid, after.key_since) == (new.kid, handover_seq)
    assert (after.oscore_context, after.oscore_id) == (before.oscore_context, before.oscore_id)  # OSCORE unchanged
    assert after.key_race and len(refused) == 2, [(r.reason, r.detail) for r in refused]
    code, out = lender_cli("status", "--data", data, "--device", DEVICE, "--json")
    risks = [risk for asset in json.loads(out) for risk in asset["risks"] if risk["kind"] == "key"]
    assert code == 0 and risks and "two hands" in risks[0]["detail"], out   # the asset is not OK while it lasts

    # offline: the jsonl export with the devices file, and the bundle with the lender's key alone
    export, bundle, devices = tmp_path / "gw.jsonl", tmp_path / "gw.bundle.json", tmp_path / "devices.json"
    assert lender_cli("export", "--data", data, "--device", DEVICE, "--output", export)[0] == 0
    assert lender_cli("export", "--data", data, "--device", DEVICE, "--format", "bundle", "--output", bundle)[0] == 0
    devices.write_text(lender_cli("devices", "--data", data, "--json")[1])
    lender_key = lender_cli("key", "--data", data)[1].strip()
    code, printed = lender_cli("verify", export, "--keys", devices)
    assert code == 0 and "verify: OK" in printed, printed
    code, printed = lender_cli("verify", bundle, "--lender-key", lender_key)
    assert code == 0, printed
    without = tmp_path / "without-handover.jsonl"   # the handover's row left out: the new key's rows fail
    without.write_text("".join(line for line in export.read_text().splitlines(keepends=True)
                               if json.loads(line)["seq"] != handover_seq))
    code, printed = lender_cli("verify", without, "--keys", devices)
    assert code == 1 and "unknown_key" in printed, printed

