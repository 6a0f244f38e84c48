"""The lender's inspection answered by a running gateway over real CoAP with OSCORE, within 2 s on loopback."""
import asyncio
import time

from agent.commands import CommandInbox
from drivers.onewire import DS18B20, DS18B20Config
from hil.sim.onewire import OneWireTree
from lender.enrollment import registration
from lender.enrollment.registration import DEVICE_CONTEXTS_DIR
from lender.evidence.commands import CommandDesk
from lender.evidence.log import lender_identity
from lender.evidence.store import SQLiteStore
from telemetry.command import inspection_nonce
from telemetry.envelope import decode
from tests.kit.agent import DEVICE, IDENTITY, QUICK_UPLINK, build_agent, running
from tests.kit.lender import LenderThread


def test_a_gateway_answers_an_inspection_over_oscore_within_two_seconds(tmp_path):
    data, home = tmp_path / "lender", tmp_path / "agent"
    home.mkdir()
    with SQLiteStore.open(data) as store:
        registration.register(store, data, DEVICE, IDENTITY.public_key, with_oscore=True)
    tree = OneWireTree(tmp_path / "w1")
    probe = tree.add_ds18b20(celsius=4.5)
    temp = DS18B20(DS18B20Config("temp", probe.device_id, base_dir=tree.devices_dir, interval_s=3600))
    with LenderThread(data) as lender:
        inbox = CommandInbox(home, DEVICE, lender_identity(data).public_key, clock=time.time)
        agent = build_agent(home, sensors=[temp], lender=f"coap://127.0.0.1:{lender.port}",
                            security_context=data / DEVICE_CONTEXTS_DIR / DEVICE, uplink=QUICK_UPLINK,
                            commands=inbox, command_poll=0.1)

        async def inspect():
            await asyncio.sleep(0.3)
            probe.set_celsius(6.25)
            with SQLiteStore.open(data) as store:
                desk = CommandDesk(store, lender_identity(data))
                issued = desk.inspect(DEVICE, "staff-li")
                while (answer := desk.snapshot(issued)) is None and time.time() - issued.issued_at < 10:
                    await asyncio.sleep(0.02)
                assert answer is not None, "no snapshot within 10 s"
                return issued, answer, time.time() - issued.issued_at, store.envelope(DEVICE, answer.seq)

        issued, answer, elapsed, stored = asyncio.run(running(agent, inspect))
    assert answer.outcome == "applied" and elapsed < 2.0, elapsed
    snapshot = decode(stored.raw)
    assert inspection_nonce(snapshot.records) == issued.nonce
    assert ("temp", 6.25) in [(r.name, r.value) for r in snapshot.records]
    assert inbox.last_seq == issued.seq
