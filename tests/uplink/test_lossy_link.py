"""The uplink on a bad link (issue 20): it measures the link, adapts its batches, keeps going while the lender answers.

The link model (`agent.link`) is pure and tested as such; the rest runs over
real UDP on 127.0.0.1 with OSCORE, against the stand-in lender (`AckLender`)
through a recording relay (`UdpTap`) or the rig's impairing proxy
(`hil.netem.UdpProxy`). Timing here is only the attempts' own timers (real
time, like aiocoap's retransmissions); nothing asserts a speed.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from types import SimpleNamespace

import aiocoap
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.link import CLEAN_BELOW, CLEAN_RUN, LOSSY_ABOVE, LinkModel
from agent.spool import Spool
from agent.uplink import DATAGRAM_BYTES, Exchange, Result, Uplink, UplinkConfig
from hil.netem import DOWN, UP, Impairment, UdpProxy
from lender.enrollment.contexts import LenderCredentials, create_context_pair
from telemetry import cbor
from telemetry.envelope import decode
from tests.kit.uplink import DEVICE, AckLender, UdpTap, chain, oscore_partial_iv

FAST = {"ack_timeout": 0.2, "max_retransmit": 2, "batch_interval": 60.0}


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, envelopes=(), relay: str | None = None, impairment: Impairment | None = None,
              lender_options: dict | None = None, **config):
    """A lender (OSCORE, real UDP), optionally behind a `UdpTap` ("tap") or a `UdpProxy` ("proxy"), and a started Uplink."""
    create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "device")
    credentials = LenderCredentials.load(tmp_path / "lender")
    lender = await AckLender(credentials=credentials, **(lender_options or {})).start()
    tap = await UdpTap(lender.port).start() if relay == "tap" else None
    proxy = UdpProxy(("127.0.0.1", lender.port), seed=20).start() if relay == "proxy" else None
    if proxy is not None and impairment is not None:
        proxy.impair(impairment)
    uri = tap.uri if tap is not None else f"coap://127.0.0.1:{proxy.port}" if proxy is not None else lender.uri
    spool = Spool.open(tmp_path / "spool.db", synchronous="NORMAL")
    for envelope in envelopes:
        spool.append(envelope)
    uplink = Uplink(UplinkConfig(lender=uri, security_context=tmp_path / "device", **{**FAST, **config}), spool)
    await uplink.start()
    try:
        yield SimpleNamespace(lender=lender, tap=tap, proxy=proxy, spool=spool, uplink=uplink)
    finally:
        await uplink.close()
        if tap is not None:
            tap.close()
        if proxy is not None:
            proxy.stop()
        await lender.stop()
        credentials.close()
        spool.close()


def queued(spool: Spool) -> list[int]:
    return [item.seq for item in spool.peek(10_000, 1 << 30)]


def measured_lossy(uplink: Uplink) -> None:
    """The state the uplink is in after measuring a lossy link (its loss average well above the threshold)."""
    uplink.link.loss, uplink.link.lossy = 0.5, True


async def until(predicate, timeout: float = 20.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- the link model (pure) ----------------------------------------------------------------

def test_the_rto_follows_rfc_6298_from_exact_samples_and_starts_at_ack_timeout():
    link = LinkModel.for_timeout(2.0)
    assert (link.rto, link.min_rto) == (2.0, 1.0)            # no sample yet: ACK_TIMEOUT; the floor is RFC 6298's 1 s
    link.answered(0.5, now=10.0)
    assert (link.srtt, link.rttvar, link.rto) == (0.5, 0.25, 1.5)
    link.answered(1.5, now=11.0)
    assert link.rttvar == pytest.approx(0.75 * 0.25 + 0.25 * 1.0)
    assert link.srtt == pytest.approx(0.875 * 0.5 + 0.125 * 1.5)
    assert link.rto == pytest.approx(link.srtt + 4 * link.rttvar)
    for _ in range(50):
        link.answered(0.002, now=12.0)                       # a fast clean link: the floor holds
    assert link.rto == 1.0 and link.resend_spacing == 1.0
    assert LinkModel.for_timeout(0.05).min_rto == 0.05       # a lab's shorter ack_timeout is its own floor


def test_the_loss_estimate_reads_a_round_trip_lost_either_way_and_switches_with_hysteresis():
    rng = random.Random(20)
    link = LinkModel.for_timeout(1.0)
    for _ in range(2000):                                   # 30 % lost each way: 51 % of round trips
        if rng.random() < 0.3 or rng.random() < 0.3:
            link.timed_out()
        else:
            link.answered(1.0, now=0.0)
    assert 0.35 < link.loss < 0.65 and link.lossy
    poor = LinkModel.for_timeout(1.0)
    clean_spells = 0
    for _ in range(20_000):                                 # 10 % each way: it never looks clean for long
        if rng.random() < 0.1 or rng.random() < 0.1:
            poor.timed_out()
        else:
            poor.answered(1.0, now=0.0)
        clean_spells += not poor.lossy
    assert clean_spells < 200
    answers = 0
    while link.lossy:
        link.answered(1.0, now=0.0)
        answers += 1
    assert link.loss < CLEAN_BELOW and answers == CLEAN_RUN  # a few dozen answers in a row, not a lucky few
    link.timed_out()
    assert link.lossy                                       # one lost datagram after a clean spell: small batches


@given(st.lists(st.one_of(st.floats(0.0, 30.0), st.none()), max_size=200), st.floats(0.01, 5.0))
def test_the_rto_stays_within_its_bounds_and_the_loss_is_a_fraction(events, ack_timeout):
    link = LinkModel.for_timeout(ack_timeout)
    above, run = False, 0
    for rtt in events:
        if rtt is None:
            link.timed_out()
        else:
            link.answered(rtt, now=1.0)
        run = 0 if rtt is None else run + 1
        assert link.min_rto <= link.rto <= link.max_rto
        assert link.min_rto <= link.resend_spacing <= link.rto
        assert 0.0 <= link.loss <= 1.0
        above = (above or link.loss >= LOSSY_ABOVE) and not (link.loss < CLEAN_BELOW and run >= CLEAN_RUN)
        assert link.lossy == above


def test_heard_since_is_about_authenticated_answers_only():
    link = LinkModel.for_timeout(1.0)
    assert not link.heard_since(0.0)
    link.timed_out()
    assert not link.heard_since(0.0)
    link.answered(0.3, now=5.0)
    assert link.heard_since(5.0) and not link.heard_since(5.1)


# --- unreachable vs lossy but alive -----------------------------------------------------

def _uplink(**config) -> Uplink:
    return Uplink(UplinkConfig(insecure=True, backoff_initial=1.0, backoff_cap=8.0, **config), spool=None,
                  random=lambda: 1.0)


def test_no_answer_while_the_lender_answers_other_exchanges_is_a_lossy_link_and_never_grows_the_backoff():
    uplink = _uplink()
    uplink.link.answered(0.8, now=105.0)                  # another exchange got its answer meanwhile
    lost = Exchange(Result.FAILED, (1, 2), no_answer=True, started=100.0)
    assert [uplink.delay_after(lost) for _ in range(5)] == [0.0] * 5
    assert uplink.backoff.failures == 0


def test_no_answer_from_a_silent_lender_backs_off_exponentially_to_the_cap():
    uplink = _uplink()
    uplink.link.answered(0.8, now=50.0)                   # heard before, not since
    lost = Exchange(Result.FAILED, (1, 2), no_answer=True, started=100.0)
    assert [uplink.delay_after(lost) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_an_answer_that_takes_nothing_backs_off_even_on_a_live_link():
    uplink = _uplink()
    uplink.link.answered(0.8, now=105.0)
    refused = Exchange(Result.FAILED, (1,), detail="lender answered 5.00", started=100.0)
    assert uplink.delay_after(refused) == 1.0 and uplink.delay_after(refused) == 2.0


# --- attempts over real UDP ------------------------------------------------------------------

def test_a_batch_that_fits_one_datagram_goes_as_one_non_request(tmp_path):
    async def scenario():
        async with rig(tmp_path, envelopes=chain(4), relay="tap") as r:
            exchange = await r.uplink.send_once()
            return exchange, r.tap.requests, queued(r.spool)

    exchange, requests, left = asyncio.run(scenario())
    assert exchange.result is Result.DELIVERED and exchange.attempts == 1 and left == []
    [request] = requests
    message = aiocoap.Message.decode(request)
    assert message.mtype is aiocoap.NON and message.opt.oscore is not None and len(request) <= DATAGRAM_BYTES + 100


def test_a_lost_answer_is_followed_by_a_new_attempt_with_its_own_token_and_sequence_number(tmp_path):
    envelopes = chain(4)

    async def scenario():
        async with rig(tmp_path, envelopes=envelopes, relay="tap") as r:
            r.tap.drop_next_responses = 1                   # the lender stores the batch; its answer is lost
            exchange = await r.uplink.send_once()
            return exchange, r.tap, r.lender, queued(r.spool), r.uplink.link

    exchange, tap, lender, left, link = asyncio.run(scenario())
    assert exchange.result is Result.DELIVERED and exchange.attempts == 2 and exchange.deleted == 4 and left == []
    first, second = (aiocoap.Message.decode(d) for d in tap.requests)
    assert first.token != second.token and oscore_partial_iv(tap.requests[0]) != oscore_partial_iv(tap.requests[1])
    assert tap.request_times[1] - tap.request_times[0] >= 0.2 * 0.9   # one RTO (the ack_timeout before samples)
    assert lender.stored == {e.seq: e.raw for e in envelopes}          # stored once, though it arrived twice
    assert (link.timeouts, link.answers) == (1, 1)


def test_an_alarm_keeps_being_resent_more_and_more_slowly_while_nothing_is_heard(tmp_path):
    alarm = chain(1, alarms=frozenset({1}))

    async def scenario():
        async with rig(tmp_path, envelopes=alarm, relay="tap", ack_timeout=0.05, exchange_deadline=1.6) as r:
            r.tap.drop_requests = True
            exchange = await r.uplink.send_once()
            return exchange, r.tap.request_times, queued(r.spool)

    exchange, times, left = asyncio.run(scenario())
    assert exchange.result is Result.FAILED and exchange.no_answer and exchange.alarm and left == [1]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert len(times) >= 4 and exchange.attempts == len(times)             # more than a batch's 1 + max_retransmit
    assert all(later >= 1.5 * earlier for earlier, later in zip(gaps, gaps[1:]))   # doubling: the link is silent


def test_a_long_ack_is_fetched_block_by_block_and_concurrent_batches_keep_their_own(tmp_path):
    # Two batches in flight at once, each answered with an ack over one block; the Request-Tag keeps the
    # lender's Block2 cache entries apart, or the second ack's blocks would be spliced into the first.
    envelopes = chain(40)

    def pad(seqs: list[int]) -> bytes:
        return bytes([seqs[0] % 251]) * (1500 + 97 * (seqs[0] % 5))

    async def scenario():
        async with rig(tmp_path, envelopes=envelopes, relay="proxy", impairment=Impairment(delay_s=0.05),
                       lender_options={"pad_ack": pad}, max_in_flight=4, ack_timeout=1.0) as r:
            measured_lossy(r.uplink)
            task = asyncio.create_task(r.uplink.run())
            await until(lambda: not queued(r.spool))
            await stop(task)
            return r.uplink.link, r.lender

    link, lender = asyncio.run(scenario())
    assert sorted(lender.stored) == [e.seq for e in envelopes]
    assert all(len(batch.envelopes) * 170 < DATAGRAM_BYTES + 200 for batch in lender.batches)
    assert len(lender.batches) == len({tuple(batch.envelopes) for batch in lender.batches})  # none resent: no bad ack


# --- the window and alarms ---------------------------------------------------------------------

def test_on_a_lossy_link_several_one_datagram_batches_are_in_flight_at_once(tmp_path):
    async def scenario():
        async with rig(tmp_path, envelopes=chain(60), relay="proxy", impairment=Impairment(delay_s=0.3),
                       max_in_flight=4, ack_timeout=1.0) as r:
            measured_lossy(r.uplink)
            task = asyncio.create_task(r.uplink.run())
            await until(lambda: r.proxy.stats()[UP].received >= 4)
            await asyncio.sleep(0.2)                          # the first answers are still 0.3 s away
            in_flight = r.proxy.stats()[UP].received
            await until(lambda: not queued(r.spool))
            await stop(task)
            return in_flight, r.lender

    in_flight, lender = asyncio.run(scenario())
    assert in_flight == 4
    assert sorted(lender.stored) == list(range(1, 61))
    assert all(batch.size <= DATAGRAM_BYTES for batch in lender.batches)


def test_on_a_clean_link_one_exchange_at_a_time_and_a_backlog_goes_block_wise(tmp_path):
    async def scenario():
        async with rig(tmp_path, envelopes=chain(150), relay="proxy", impairment=Impairment(delay_s=0.02)) as r:
            task = asyncio.create_task(r.uplink.run())
            await until(lambda: not queued(r.spool))
            await stop(task)
            return r.lender, r.proxy.stats(), r.uplink.link

    lender, stats, link = asyncio.run(scenario())
    assert not link.lossy and lender.batches[0].size > 8 * DATAGRAM_BYTES
    assert stats[UP].received == stats[DOWN].received            # one request datagram in flight at a time


def test_an_alarm_goes_alone_and_at_once_while_a_block_wise_batch_is_in_flight(tmp_path):
    routine = chain(120)
    alarm = chain(1, first_seq=121, alarms=frozenset({121}), prev=routine[-1].digest)[0]

    async def scenario():
        async with rig(tmp_path, envelopes=routine, relay="proxy", impairment=Impairment(delay_s=0.1)) as r:
            task = asyncio.create_task(r.uplink.run())
            await until(lambda: r.proxy.stats()[UP].received >= 3)   # the block-wise batch is under way
            r.spool.append(alarm)
            r.uplink.wake()
            await until(lambda: 121 in r.lender.stored)
            batches_at_alarm = len(r.lender.batches)
            await until(lambda: not queued(r.spool))
            await stop(task)
            return batches_at_alarm, r.lender

    batches_at_alarm, lender = asyncio.run(scenario())
    assert batches_at_alarm == 1                              # the block-wise batch had not arrived yet
    assert [decode(raw).seq for raw in lender.batches[0].envelopes] == [121]
    assert sorted(lender.stored) == list(range(1, 122))


def test_a_partition_backs_off_to_the_cap_and_the_first_answer_after_it_resumes_delivery(tmp_path):
    async def scenario():
        async with rig(tmp_path, envelopes=chain(10), relay="proxy", backoff_initial=0.1, backoff_cap=0.4,
                       ack_timeout=0.05, max_retransmit=1) as r:
            r.proxy.partition()
            task = asyncio.create_task(r.uplink.run())
            await until(lambda: r.uplink.backoff.ceiling == 0.4)
            await asyncio.sleep(1.0)
            ceiling = r.uplink.backoff.ceiling
            r.proxy.heal()
            await until(lambda: not queued(r.spool), timeout=5.0)
            await stop(task)
            return ceiling, r.uplink.backoff.failures, r.lender

    ceiling, failures, lender = asyncio.run(scenario())
    assert ceiling == 0.4 and failures == 0
    assert sorted(lender.stored) == list(range(1, 11))

