"""OSCORE state across restarts, over real UDP: a restarted or SIGKILLed agent never reuses a sender
sequence number, a restarted or crashed lender keeps talking to the device, and a replayed request is
never processed again."""
from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from pathlib import Path

import aiocoap
from aiocoap.numbers import codes

from agent.spool import Spool
from agent.uplink import Result, Uplink, UplinkConfig
from lender.enrollment.contexts import LenderCredentials, create_context_pair
from tests.kit.uplink import DEVICE, AckLender, UdpTap, chain, free_udp_port, oscore_partial_iv

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FAST_COAP = {"ack_timeout": 0.2, "max_retransmit": 2}


def distinct_partial_ivs(datagrams: list[bytes]) -> list[int]:
    """Sender sequence numbers of the distinct request datagrams (a CoAP retransmission repeats its bytes)."""
    unique = list(dict.fromkeys(datagrams))
    return [int.from_bytes(oscore_partial_iv(d), "big") for d in unique]


def test_an_agent_restarted_again_and_again_keeps_talking_and_never_reuses_a_sequence_number(tmp_path):
    envelopes = chain(18)

    async def scenario():
        create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "device")
        credentials = LenderCredentials.load(tmp_path / "lender")
        lender = await AckLender(credentials=credentials).start()
        tap = await UdpTap(lender.port).start()
        config = UplinkConfig(lender=tap.uri, security_context=tmp_path / "device", max_batch_count=3, **FAST_COAP)
        results, resumed_at = [], []
        with Spool.open(tmp_path / "spool.db", synchronous="NORMAL") as spool:
            for envelope in envelopes:
                spool.append(envelope)
            for _ in range(6):                           # six agent restarts, one batch each
                async with Uplink(config, spool) as uplink:
                    results.append(await uplink.send_once())
                resumed_at.append(json.loads((tmp_path / "device" / "sequence.json").read_text())["next-to-send"])
            left = len(spool)
        tap.close()
        await lender.stop()
        credentials.close()
        return results, resumed_at, left, tap.requests, lender

    results, resumed_at, left, requests, lender = asyncio.run(scenario())
    assert [r.result for r in results] == [Result.DELIVERED] * 6 and left == 0
    assert sorted(lender.stored) == list(range(1, 19))
    ivs = distinct_partial_ivs(requests)
    assert ivs == sorted(set(ivs))                       # strictly increasing across every restart
    assert resumed_at == [iv + 1 for iv in ivs]          # a clean close writes back the exact next number


def test_an_agent_killed_mid_upload_never_reuses_a_sequence_number_and_loses_nothing(tmp_path):
    envelopes = chain(120)
    rng = random.Random(8613)

    async def scenario():
        create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "device")
        with Spool.open(tmp_path / "spool.db", synchronous="NORMAL") as spool:
            for envelope in envelopes:
                spool.append(envelope)
        credentials = LenderCredentials.load(tmp_path / "lender")
        lender = await AckLender(credentials=credentials).start()
        tap = await UdpTap(lender.port).start()
        kills, first_iv_per_run, exit_codes = 0, [], []
        try:
            for run in range(6):
                seen = len(tap.requests)
                last = run == 5
                child = await asyncio.create_subprocess_exec(
                    sys.executable, str(HERE / "uplink_agent_child.py"), str(REPO), str(tmp_path / "spool.db"),
                    str(tmp_path / "device"), tap.uri, *(["--until-empty"] if last else []))
                if not last:
                    await lender.wait_for_batches(len(lender.batches) + rng.randint(1, 4))
                    child.send_signal(signal.SIGKILL)
                    kills += 1
                exit_codes.append(await asyncio.wait_for(child.wait(), 60))
                first_iv_per_run.append(distinct_partial_ivs(tap.requests[seen:])[0])
        finally:
            tap.close()
            await lender.stop()
            credentials.close()
        with Spool.open(tmp_path / "spool.db", synchronous="NORMAL") as spool:
            left = len(spool)
        return kills, exit_codes, left, lender, tap.requests, first_iv_per_run

    kills, exit_codes, left, lender, requests, first_iv_per_run = asyncio.run(scenario())
    assert kills == 5 and exit_codes == [-signal.SIGKILL] * 5 + [0]
    assert lender.stored == {e.seq: e.raw for e in envelopes}   # every envelope, byte for byte, once
    assert left == 0
    ivs = distinct_partial_ivs(requests)
    assert len(ivs) == len(set(ivs)), "an OSCORE sender sequence number was used twice"
    assert first_iv_per_run == sorted(first_iv_per_run)         # each run resumes above everything used


class _LenderProcess:
    """The stand-in lender as a child process on a fixed port; its stdout lines say what it processed."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "uplink_lender_child.py"), str(REPO), str(self.root), str(self.port),
            stdout=asyncio.subprocess.PIPE)
        ready = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert ready == b"ready\n"
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while line := await self.process.stdout.readline():
            self.lines.append(line.decode().strip())

    async def stop(self, sig: int) -> None:
        self.process.send_signal(sig)
        await self.process.wait()
        await self._reader


async def _replay(datagram: bytes, port: int) -> aiocoap.Message | None:
    """Send a captured request again from a new socket (so CoAP deduplication cannot answer it); None: no answer."""
    loop = asyncio.get_running_loop()
    answer = loop.create_future()

    class Attacker(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not answer.done():
                answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Attacker, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(datagram)
        return aiocoap.Message.decode(await asyncio.wait_for(answer, 2))
    except TimeoutError:
        return None
    finally:
        transport.close()


def test_a_replayed_request_is_never_processed_again_even_across_lender_restarts_and_crashes(tmp_path):
    envelopes = chain(4)

    async def scenario():
        create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "device")
        port = free_udp_port()
        lender = _LenderProcess(tmp_path / "lender", port)
        await lender.start()
        tap = await UdpTap(port).start()
        config = UplinkConfig(lender=tap.uri, security_context=tmp_path / "device", max_batch_count=1, **FAST_COAP)
        answers, requests_per_batch = [], []
        with Spool.open(tmp_path / "spool.db", synchronous="NORMAL") as spool:
            for envelope in envelopes:
                spool.append(envelope)
            async with Uplink(config, spool) as uplink:
                async def deliver():
                    before = len(tap.requests)
                    exchange = await uplink.send_once()
                    requests_per_batch.append(len(tap.requests) - before)
                    return exchange.result

                assert await deliver() is Result.DELIVERED              # seq 1
                captured = tap.requests[0]
                answers.append(await _replay(captured, port))            # same lender process
                await lender.stop(signal.SIGTERM)                        # clean restart
                await lender.start()
                answers.append(await _replay(captured, port))
                assert await deliver() is Result.DELIVERED              # seq 2
                await lender.stop(signal.SIGKILL)                        # crash: replay window lost
                await lender.start()
                answers.append(await _replay(captured, port))
                assert await deliver() is Result.DELIVERED              # seq 3, after an Echo round trip
                assert await deliver() is Result.DELIVERED              # seq 4
        await lender.stop(signal.SIGTERM)
        tap.close()
        return answers, requests_per_batch, lender.lines

    answers, requests_per_batch, lines = asyncio.run(scenario())
    assert lines == ["batch 1", "batch 2", "batch 3", "batch 4"]        # the replays were never processed
    for answer in answers[:2]:     # window known: refused outright (a NON request in silence, a CON one with 4.01)
        assert answer is None or (answer.code == codes.UNAUTHORIZED and answer.payload == b"Replay detected")
    assert answers[2].opt.oscore is not None                             # window lost: an Echo challenge
    assert requests_per_batch == [1, 1, 2, 1]                            # the device answered the Echo itself
