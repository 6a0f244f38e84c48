"""The uplink against the real lender (lender.server) over OSCORE on 127.0.0.1: both sides read
docs/transport.md the same way — stored, already present, a forged envelope set aside, a 4.13 obeyed."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from agent.spool import Spool
from agent.uplink import Result, Uplink, UplinkConfig
from lender.enrollment.registration import register
from lender.evidence.store import SQLiteStore
from lender.server import LenderServer
from telemetry.envelope import Reason
from tests.kit.uplink import DEVICE, GATEWAY, UdpTap, chain

FAST_COAP = {"ack_timeout": 0.05, "max_retransmit": 1}


def _forged(envelope):
    """The same envelope with one signature byte flipped: valid CBOR, right kid, signature that fails."""
    raw = envelope.raw[:-1] + bytes([envelope.raw[-1] ^ 0x01])
    return SimpleNamespace(seq=envelope.seq, raw=raw, digest=envelope.digest, alarm=envelope.alarm)


def test_uplink_and_real_lender_agree_on_stored_already_present_and_rejected(tmp_path):
    envelopes = chain(10)
    with SQLiteStore.open(tmp_path / "lender") as store:
        register(store, tmp_path / "lender", DEVICE, GATEWAY.public_key, device_context=tmp_path / "device")

    async def scenario():
        async with LenderServer(tmp_path / "lender", bind=("127.0.0.1", 0)) as lender:
            tap = await UdpTap(lender.address[1]).start()
            config = UplinkConfig(lender=tap.uri, security_context=tmp_path / "device", **FAST_COAP)
            try:
                with Spool.open(tmp_path / "spool.db", synchronous="NORMAL") as spool:
                    for envelope in envelopes:
                        spool.append(_forged(envelope) if envelope.seq == 5 else envelope)
                    async with Uplink(config, spool) as uplink:
                        tap.drop_responses = True                  # the lender stores, the ack is lost
                        lost = await uplink.send_once()
                        tap.drop_responses = False
                        retried = []                               # after a loss, batches fit one datagram
                        while (idle := await uplink.send_once()).result is not Result.IDLE and len(retried) < 10:
                            retried.append(idle)
                    left = [item.seq for item in spool.peek(100, 1 << 20)]
                    refused = [seq for seq, _, _ in spool.refused()]
            finally:
                tap.close()
        return lost, retried, idle, left, refused

    lost, retried, idle, left, refused = asyncio.run(scenario())
    assert lost.result is Result.FAILED
    assert all(e.result is Result.DELIVERED for e in retried)
    assert sum(e.deleted for e in retried) == 9                            # all "already present" now
    assert [(r.seq, r.reason) for e in retried for r in e.set_aside] == [(5, int(Reason.BAD_SIGNATURE))]
    assert idle.result is Result.IDLE
    assert left == [] and refused == [5]                                   # kept, no longer sent


def test_uplink_shrinks_its_batches_when_the_real_lender_answers_too_large(tmp_path):
    envelopes = chain(60)
    with SQLiteStore.open(tmp_path / "lender") as store:
        register(store, tmp_path / "lender", DEVICE, GATEWAY.public_key, device_context=tmp_path / "device")

    async def scenario():
        async with LenderServer(tmp_path / "lender", bind=("127.0.0.1", 0), max_body=4096) as lender:
            config = UplinkConfig(lender=f"coap://127.0.0.1:{lender.address[1]}",
                                  security_context=tmp_path / "device", **FAST_COAP)
            with Spool.open(tmp_path / "spool.db", synchronous="NORMAL") as spool:
                for envelope in envelopes:
                    spool.append(envelope)
                async with Uplink(config, spool) as uplink:
                    first = await uplink.send_once()
                    rest = []
                    while (exchange := await uplink.send_once()).result is not Result.IDLE and len(rest) < 20:
                        rest.append(exchange)
                    return first, rest, uplink.byte_cap, len(spool)

    first, rest, cap, left = asyncio.run(scenario())
    assert first.result is Result.TOO_LARGE and cap == 4096
    assert all(e.result is Result.DELIVERED for e in rest) and left == 0
