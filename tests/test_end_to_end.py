"""The whole path over real UDP with OSCORE: agent → lender, through a lender outage and through power cuts."""
import asyncio
import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.spool import Spool
from durable.keyfile import create_key
from hil.processes import LenderProcess, free_udp_port
from telemetry.chain import check_chain
from telemetry.envelope import verify
from telemetry.identity import Identity
from telemetry.senml import Record
from tests.kit.agent import QUICK_UPLINK, build_agent

HERE = Path(__file__).parent


def exported(lender: LenderProcess, device: str, identity: Identity) -> list:
    """The lender's evidence export for `device`, each row re-verified from its exact bytes."""
    out = lender.export(device, lender.data.parent / f"{device}.jsonl").read_text()
    keys = {identity.kid: identity.device_key(device)}
    envelopes = []
    for line in out.splitlines():
        row = json.loads(line)
        verdict = verify(base64.b64decode(row["envelope_b64"]), keys)
        assert verdict.ok and verdict.envelope.seq == row["seq"], verdict.detail
        envelopes.append(verdict.envelope)
    return envelopes


def test_ten_thousand_readings_arrive_exactly_once_across_a_lender_outage(tmp_path):
    identity = Identity.generate()
    # a fixed port: the agent must find the lender where it was after the restart
    lender = LenderProcess(tmp_path / "lender", bind=f"127.0.0.1:{free_udp_port()}", log_path=tmp_path / "lender.log")
    context = lender.register("gw-e2e", identity.public_key.hex())
    lender.start()

    async def scenario() -> int:
        agent = build_agent(tmp_path, device="gw-e2e", identity=identity, lender=lender.uri, security_context=context,
                            uplink=QUICK_UPLINK, recording=True)  # its parts, without the daemon's loop
        spool, recorder, uplink = agent.spool, agent.recorder, agent.uplink
        sending = asyncio.create_task(uplink.run())
        for index in range(10_000):
            recorder.record([Record("weight", value=1000 + index % 7, unit="kg", time=1_767_225_600 + index)])
            if index == 3_000:
                lender.stop()  # the lender goes away mid-run ...
            if index == 6_000:
                await asyncio.sleep(1.0)
                lender.start()  # ... and comes back
            if index % 20 == 0:
                await asyncio.sleep(0)
        deadline = time.monotonic() + 120
        while len(spool) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = len(spool)
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        await uplink.close()
        spool.close()
        return left

    try:
        assert asyncio.run(scenario()) == 0
    finally:
        lender.stop()
    envelopes = exported(lender, "gw-e2e", identity)
    assert sorted(e.seq for e in envelopes) == list(range(1, 10_001))  # each reading exactly once
    report = check_chain(envelopes)
    assert report.intact and not report.problems


def test_an_agent_killed_fifty_times_while_uploading_loses_nothing_and_duplicates_nothing(tmp_path):
    identity = Identity(create_key(tmp_path / "device.key"))
    lender = LenderProcess(tmp_path / "lender", log_path=tmp_path / "lender.log")
    context = lender.register("gw-e2e", identity.public_key.hex())
    rng = random.Random(50)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}

    def start_agent(*extra: str) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, str(HERE / "e2e_agent_child.py"), str(tmp_path), str(context), lender.uri, *extra],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert child.stdout.readline().strip() == "ready"
        return child

    with lender:
        for _ in range(50):
            child = start_agent()
            time.sleep(rng.uniform(0.1, 0.5))  # sampling and uploading ...
            child.send_signal(signal.SIGKILL)  # ... when the power goes
            child.wait()
        drain = start_agent("drain")
        assert drain.wait(timeout=120) == 0
    with Spool.open(tmp_path / "spool.db") as spool:
        last = spool.head().seq
        assert len(spool) == 0
    envelopes = exported(lender, "gw-e2e", identity)
    assert sorted(e.seq for e in envelopes) == list(range(1, last + 1))  # every appended envelope, once
    report = check_chain(envelopes)
    assert report.intact and not report.problems
    power_losses = [e for e in envelopes if e.gap is not None and e.gap.reason == "power-loss"]
    assert len(power_losses) == 50  # each power cut is a signed statement at the lender
