"""The uplink's story over real UDP on 127.0.0.1 with OSCORE: batches, alarms first, backoff, acks, failures.

The lender here is `AckLender` (a real aiocoap server playing the ack role of
docs/transport.md); the spool is the real `agent.spool.Spool` in a temp dir.
Time is a `DrivenClock`: nothing waits on the wall clock except aiocoap's own
retransmission timers, tuned down for the timeout cases.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import aiocoap
import pytest
from aiocoap.numbers import codes
from hypothesis import given
from hypothesis import strategies as st

from agent.exc import UplinkConfigError
from agent.spool import Spool
from agent.uplink import (
    Backoff,
    Result,
    Uplink,
    UplinkConfig,
    encode_batch,
    fit_batch,
)
from lender.enrollment.contexts import LenderCredentials, create_context_pair
from telemetry import cbor
from telemetry.ack import Ack
from telemetry.envelope import Reason
from telemetry.exc import AckFormatError
from tests.kit.uplink import DEVICE, AckLender, DrivenClock, UdpTap, chain

FAST_COAP = {"ack_timeout": 0.05, "max_retransmit": 1}  # a lost exchange gives up after ~0.25 s


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, envelopes=(), tap=False, clock=None, random=lambda: 1.0, **config):
    """A lender (OSCORE, real UDP), a spool holding `envelopes`, and a started Uplink between them."""
    if not (tmp_path / "device").exists():
        create_context_pair(tmp_path / "lender", DEVICE, tmp_path / "device")
    credentials = LenderCredentials.load(tmp_path / "lender")
    lender = await AckLender(credentials=credentials).start()
    relay = await UdpTap(lender.port).start() if tap else None
    spool = Spool.open(tmp_path / "spool.db", synchronous="NORMAL")
    for envelope in envelopes:
        spool.append(envelope)
    settings = {**FAST_COAP, "batch_interval": 60.0, **config}
    uplink_config = UplinkConfig(lender=(relay or lender).uri, security_context=tmp_path / "device", **settings)
    timing = {} if clock is None else {"clock": clock, "sleep": clock.sleep}
    uplink = Uplink(uplink_config, spool, random=random, **timing)
    await uplink.start()
    try:
        yield SimpleNamespace(lender=lender, tap=relay, spool=spool, uplink=uplink)
    finally:
        await uplink.close()
        if relay is not None:
            relay.close()
        await lender.stop()
        credentials.close()
        spool.close()


def queued(spool: Spool) -> list[int]:
    return [item.seq for item in spool.peek(10_000, 1 << 30)]


def sent_seqs(lender: AckLender) -> list[list[int]]:
    from telemetry.envelope import decode
    return [[decode(raw).seq for raw in batch.envelopes] for batch in lender.batches]


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- batching ----------------------------------------------------------------

def test_backlog_leaves_in_batches_cut_at_the_size_cap_in_seq_order(tmp_path):
    envelopes = chain(40)

    async def scenario():
        async with rig(tmp_path, envelopes=envelopes, max_batch_bytes=1024) as r:
            results = [await r.uplink.send_once() for _ in range(12)]
            return r.lender, results, queued(r.spool)

    lender, results, left = asyncio.run(scenario())
    assert left == []
    assert results[-1].result is Result.IDLE
    assert all(batch.size <= 1024 for batch in lender.batches)
    sizes = {e.raw: len(e.raw) for e in envelopes}
    for batch, following in zip(lender.batches, lender.batches[1:]):
        assert batch.size + sizes[following.envelopes[0]] + 2 > 1024   # each batch as full as the cap allows
    assert [raw for batch in lender.batches for raw in batch.envelopes] == [e.raw for e in envelopes]
    assert {batch.device for batch in lender.batches} == {DEVICE}  # authenticated by OSCORE, not by the body


def test_a_batch_larger_than_one_block_goes_blockwise_in_one_exchange(tmp_path):
    envelopes = chain(120)

    async def scenario():
        async with rig(tmp_path, envelopes=envelopes, tap=True) as r:
            exchange = await r.uplink.send_once()
            return r.lender, r.tap, exchange

    lender, tap, exchange = asyncio.run(scenario())
    assert exchange.result is Result.DELIVERED and exchange.full
    [batch] = lender.batches
    assert 15 * 1024 < batch.size <= 16 * 1024
    assert batch.envelopes == [e.raw for e in envelopes[: len(batch.envelopes)]]
    # RFC 7959 Block1: one request datagram per 1024-byte block, each its own OSCORE request
    assert len(tap.requests) == math.ceil(batch.size / 1024)


def test_fit_batch_keeps_the_encoded_body_under_the_cap_and_always_sends_one():
    envelopes = chain(30)
    for cap in (256, 700, 1024, 4096):
        chosen = fit_batch(envelopes, cap)
        assert len(encode_batch([e.raw for e in chosen])) <= cap
        assert chosen == envelopes[: len(chosen)]
        if len(chosen) < len(envelopes):
            assert len(encode_batch([e.raw for e in envelopes[: len(chosen) + 1]])) > cap - 5
    assert fit_batch(envelopes[:1], 10) == envelopes[:1]


# --- timing: interval, alarms, backoff ------------------------------------------

def test_routine_readings_wait_for_the_batch_interval(tmp_path):
    async def scenario():
        clock = DrivenClock()
        async with rig(tmp_path, clock=clock) as r:
            task = asyncio.create_task(r.uplink.run())
            assert await clock.wait_for_sleep(1) == 60.0        # nothing queued: wait an interval
            for envelope in chain(3):
                r.spool.append(envelope)
            await asyncio.sleep(0.05)
            before = len(r.lender.batches)                     # still inside the interval
            clock.advance(60.0)
            await r.lender.wait_for_batches(1)
            await clock.wait_for_sleep(2)
            await stop(task)
            return before, sent_seqs(r.lender), clock.sleeps

    before, sent, sleeps = asyncio.run(scenario())
    assert before == 0
    assert sent == [[1, 2, 3]]
    assert sleeps == [60.0, 60.0]


def test_an_alarm_goes_out_at_once_ahead_of_the_backlog(tmp_path):
    routine = chain(25)
    alarm = chain(1, first_seq=26, alarms=frozenset({26}), prev=routine[-1].digest)[0]
    assert alarm.alarm

    async def scenario():
        clock = DrivenClock()
        async with rig(tmp_path, clock=clock, max_batch_count=10) as r:
            task = asyncio.create_task(r.uplink.run())
            await clock.wait_for_sleep(1)
            for envelope in routine:
                r.spool.append(envelope)
            r.spool.append(alarm)
            r.uplink.wake()                                   # what the agent does after appending an alarm
            await r.lender.wait_for_batches(3)
            await clock.wait_for_sleep(2)
            await stop(task)
            return sent_seqs(r.lender), clock.now, queued(r.spool)

    sent, now, left = asyncio.run(scenario())
    assert now == 0.0                                         # no interval passed
    assert sent[0][0] == 26                                   # the alarm leads, routine fills the rest
    assert [seq for batch in sent for seq in batch] == [26, *range(1, 26)]
    assert left == []


def test_backoff_grows_with_full_jitter_and_a_success_resets_it(tmp_path):
    async def scenario():
        clock = DrivenClock()
        async with rig(tmp_path, envelopes=chain(5), clock=clock, backoff_initial=1.0, backoff_cap=10.0) as r:
            await r.lender.stop()                             # the lender is down: ICMP port unreachable
            task = asyncio.create_task(r.uplink.run())
            for count in range(1, 7):
                await clock.wait_for_sleep(count)
                clock.advance(clock.sleeps[-1])
            await clock.wait_for_sleep(7)
            await r.lender.start()                            # the network is back
            clock.advance(clock.sleeps[-1])
            await r.lender.wait_for_batches(1)
            await clock.wait_for_sleep(8)
            after_success = queued(r.spool)
            for envelope in chain(1, first_seq=6, prev=chain(5)[-1].digest):
                r.spool.append(envelope)
            await r.lender.stop()
            clock.advance(clock.sleeps[-1])
            await clock.wait_for_sleep(9)
            await stop(task)
            return clock.sleeps, after_success

    sleeps, after_success = asyncio.run(scenario())
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 60.0, 1.0]
    assert after_success == []


def test_an_alarm_cuts_a_backoff_wait_short_when_the_network_returns(tmp_path):
    async def scenario():
        clock = DrivenClock()
        async with rig(tmp_path, envelopes=chain(3), clock=clock, backoff_cap=300.0) as r:
            await r.lender.stop()
            task = asyncio.create_task(r.uplink.run())
            for count in range(1, 5):
                await clock.wait_for_sleep(count)
                clock.advance(clock.sleeps[-1])
            await clock.wait_for_sleep(5)                     # now waiting 16 s
            await r.lender.start()
            r.spool.append(chain(1, first_seq=4, alarms=frozenset({4}), prev=chain(3)[-1].digest)[0])
            r.uplink.wake()
            await r.lender.wait_for_batches(2)
            await stop(task)
            return clock.now, sent_seqs(r.lender)

    now, sent = asyncio.run(scenario())
    assert now == 1.0 + 2.0 + 4.0 + 8.0
    assert sent == [[4], [1, 2, 3]]     # the alarm alone, at once; once it is acked the backlog resumes at once


@given(st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=80),
       st.floats(0.01, 5.0), st.floats(5.0, 600.0))
def test_backoff_delays_stay_within_the_full_jitter_envelope(draws, initial, cap):
    values = iter(draws)
    backoff = Backoff(initial, cap, lambda: next(values))
    for n, draw in enumerate(draws):
        ceiling = min(cap, initial * 2 ** n)
        assert backoff.next_delay() == pytest.approx(draw * ceiling)
    backoff.reset()
    assert backoff.ceiling == initial


# --- failures: nothing is deleted --------------------------------------------------

def test_nothing_is_deleted_when_the_lender_never_answers(tmp_path):
    async def scenario():
        async with rig(tmp_path, envelopes=chain(8), tap=True) as r:
            r.tap.drop_requests = True
            exchange = await r.uplink.send_once()
            return exchange, queued(r.spool), r.lender.batches

    exchange, left, batches = asyncio.run(scenario())
    assert exchange.result is Result.FAILED and "ConRetransmitsExceeded" in exchange.detail
    assert left == list(range(1, 9)) and batches == []


def test_the_uplink_stops_at_once_when_cancelled_mid_exchange_and_deletes_nothing(tmp_path):
    async def scenario():
        async with rig(tmp_path, envelopes=chain(5), tap=True, ack_timeout=30.0) as r:
            r.tap.drop_requests = True                       # the exchange hangs in CoAP retransmission
            task = asyncio.create_task(r.uplink.run())
            while not r.tap.requests:
                await asyncio.sleep(0.005)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            return done, task, queued(r.spool)

    done, task, left = asyncio.run(scenario())
    assert done and task.cancelled()
    assert left == [1, 2, 3, 4, 5]


def test_a_lost_ack_keeps_the_batch_and_the_retry_is_acked_as_already_present(tmp_path):
    envelopes = chain(6)

    async def scenario():
        async with rig(tmp_path, envelopes=envelopes, tap=True) as r:
            r.tap.drop_responses = True
            lost = await r.uplink.send_once()
            left_after_loss = queued(r.spool)
            r.tap.drop_responses = False
            retried = [await r.uplink.send_once() for _ in range(2)]   # after a loss, batches fit one datagram
            return lost, left_after_loss, retried, queued(r.spool), r.lender

    lost, left_after_loss, retried, left, lender = asyncio.run(scenario())
    assert lost.result is Result.FAILED and lost.no_answer and left_after_loss == list(range(1, 7))
    assert all(e.result is Result.DELIVERED for e in retried) and sum(e.deleted for e in retried) == 6 and left == []
    assert lender.stored == {e.seq: e.raw for e in envelopes}  # stored once, though sent twice
    assert sum(len(batch.envelopes) for batch in lender.batches[-2:]) == 6   # the retries carried all six again


@pytest.mark.parametrize("code", [codes.SERVICE_UNAVAILABLE, codes.INTERNAL_SERVER_ERROR,
                                  codes.UNAUTHORIZED, codes.FORBIDDEN, codes.NOT_FOUND])
def test_a_lender_error_keeps_the_batch_queued_and_backs_off(tmp_path, code):
    async def scenario():
        async with rig(tmp_path, envelopes=chain(4)) as r:
            r.lender.answers.append(code)
            exchange = await r.uplink.send_once()
            return exchange, r.uplink.delay_after(exchange), r.uplink.backoff.failures, queued(r.spool)

    exchange, delay, failures, left = asyncio.run(scenario())
    assert exchange.result is Result.FAILED and str(code) in exchange.detail
    assert (delay, failures, left) == (1.0, 1, [1, 2, 3, 4])


def test_a_service_unavailable_with_max_age_is_not_retried_sooner(tmp_path):
    async def scenario():
        async with rig(tmp_path, envelopes=chain(2), backoff_cap=300.0) as r:
            answer = aiocoap.Message(code=codes.SERVICE_UNAVAILABLE, max_age=30)
            r.lender.answers.append(answer)
            exchange = await r.uplink.send_once()
            return r.uplink.delay_after(exchange), queued(r.spool)

    delay, left = asyncio.run(scenario())
    assert delay == 30.0 and left == [1, 2]


def test_a_malformed_ack_deletes_nothing(tmp_path):
    async def scenario():
        async with rig(tmp_path, envelopes=chain(4)) as r:
            r.lender.answers.append(b"\xa1\x01\x9f")   # a map whose array never ends
            r.lender.answers.append(cbor.encode({1: [1, 2], 3: [[0, 3, "bad signature"]]}))  # contradictory
            first = await r.uplink.send_once()
            second = await r.uplink.send_once()
            return first, second, queued(r.spool)

    first, second, left = asyncio.run(scenario())
    assert first.result is Result.FAILED and "malformed ack" in first.detail
    assert second.result is Result.FAILED and "both accepts and rejects" in second.detail
    assert left == [1, 2, 3, 4]


def test_too_large_halves_the_batch_cap_and_retries_at_once(tmp_path):
    envelopes = chain(50)

    async def scenario():
        async with rig(tmp_path, envelopes=envelopes) as r:
            r.lender.max_body = 3000
            first = await r.uplink.send_once()
            delay = r.uplink.delay_after(first)
            rest = []
            while (exchange := await r.uplink.send_once()).result is not Result.IDLE and len(rest) < 20:
                rest.append(exchange)
            return first, delay, rest, r.uplink.byte_cap, r.lender, queued(r.spool)

    first, delay, rest, cap, lender, left = asyncio.run(scenario())
    assert first.result is Result.TOO_LARGE and delay == 0.0
    assert cap == 3000                                     # min(half of 16 KiB, the lender's Size1)
    assert all(e.result is Result.DELIVERED for e in rest) and left == []
    assert all(batch.size <= 3000 for batch in lender.batches)
    assert sorted(lender.stored) == [e.seq for e in envelopes]


# --- the ack: exactly stored ∪ already-present leaves the spool ----------------------

def test_the_ack_deletes_exactly_stored_and_already_present_and_sets_permanent_rejections_aside(tmp_path, caplog):
    envelopes = chain(6)

    async def scenario():
        async with rig(tmp_path, envelopes=envelopes) as r:
            r.lender.stored[2] = envelopes[1].raw                 # already present
            r.lender.stored[4] = b"other bytes under seq 4"       # conflicting duplicate -> 6
            r.lender.reject = {3: (int(Reason.BAD_SIGNATURE), "bad signature"),
                               5: (int(Reason.UNKNOWN_KEY), "device not enrolled yet")}
            first = await r.uplink.send_once()
            after_first = queued(r.spool)
            second = await r.uplink.send_once()                   # only the retryable one goes again
            del r.lender.reject[5]                                # enrollment completed
            third = await r.uplink.send_once()
            fourth = await r.uplink.send_once()
            return (first, after_first, second, third, fourth, queued(r.spool), sent_seqs(r.lender),
                    r.spool.refused())

    first, after_first, second, third, fourth, left, sent, refused = asyncio.run(scenario())
    assert first.result is Result.DELIVERED and first.deleted == 3
    assert after_first == [5]                   # 3 and 4 left the send queue for the refused table
    assert {(r.seq, r.reason) for r in first.set_aside} == {(3, 3), (4, 6)}
    assert [(r.seq, r.reason) for r in first.retry_later] == [(5, 2)]
    assert second.result is Result.NO_PROGRESS and second.sent == (5,)
    assert third.result is Result.DELIVERED and third.sent == (5,)
    assert fourth.result is Result.IDLE
    assert left == []
    assert [(seq, reason) for seq, reason, _ in refused] == [(3, 3), (4, 6)]  # never deleted: kept as evidence
    assert sent == [[1, 2, 3, 4, 5, 6], [5], [5]]
    assert "seq 3" in caplog.text and "seq 4" in caplog.text


def test_a_poison_envelope_is_isolated_by_halving_and_set_aside_while_the_rest_flows(tmp_path):
    envelopes = chain(20)

    async def scenario():
        async with rig(tmp_path, envelopes=envelopes) as r:
            r.lender.refuse_seqs = {7}
            exchanges = []
            while (exchange := await r.uplink.send_once()).result is not Result.IDLE and len(exchanges) < 40:
                exchanges.append(exchange)
            return exchanges, r.lender, queued(r.spool), [seq for seq, _, _ in r.spool.refused()]

    exchanges, lender, left, refused = asyncio.run(scenario())
    assert sorted(lender.stored) == [s for s in range(1, 21) if s != 7]
    assert left == [] and refused == [7]                # kept as evidence in the refused table, not sent
    [(seq, reason)] = [(r.seq, r.reason) for e in exchanges for r in e.set_aside]
    assert (seq, reason) == (7, int(Reason.MALFORMED))


def test_a_lender_refusing_everything_never_makes_the_agent_give_up_a_reading(tmp_path):
    async def scenario():
        async with rig(tmp_path, envelopes=chain(12)) as r:
            r.lender.refuse_seqs = set(range(1, 13))
            exchanges = [await r.uplink.send_once() for _ in range(30)]
            return exchanges, queued(r.spool)

    exchanges, left = asyncio.run(scenario())
    assert all(e.result in (Result.REFUSED, Result.FAILED) and not e.set_aside for e in exchanges)
    assert left == list(range(1, 13))


BATCH = (10, 11, 12, 13)


@given(st.binary(max_size=300))
def test_any_bytes_as_an_ack_either_parse_within_the_batch_or_are_refused(body):
    try:
        ack = Ack.decode(body, BATCH)
    except AckFormatError:
        return
    assert ack.delete <= {10, 11, 12, 13}


_ack_values = st.one_of(
    st.lists(st.integers(0, 20)),
    st.lists(st.lists(st.one_of(st.integers(-2, 6), st.text(max_size=3)), max_size=4), max_size=4),
    st.integers(-(2**63), 2**64 - 1), st.text(max_size=4), st.binary(max_size=4),
)


@given(st.dictionaries(st.integers(0, 4), _ack_values, max_size=4))
def test_structured_acks_never_delete_outside_the_batch_or_both_accept_and_reject(ack_map):
    try:
        ack = Ack.decode(cbor.encode(ack_map), BATCH)
    except AckFormatError:
        return
    assert ack.delete <= {10, 11, 12, 13}
    assert not ack.delete & {r.seq for r in ack.refused}
    assert {r.seq for r in ack.refused} <= {10, 11, 12, 13}


def test_an_ack_naming_seqs_that_were_not_sent_deletes_only_what_was_sent():
    ack = Ack.decode(cbor.encode({1: [10, 99], 2: [11, 5]}), BATCH)
    assert ack.delete == {10, 11} and ack.foreign == {99, 5}


# --- configuration ---------------------------------------------------------------------

def test_plain_coap_needs_an_explicit_insecure_flag_and_warns_at_every_start(tmp_path, caplog):
    with pytest.raises(UplinkConfigError):
        UplinkConfig(lender="coap://127.0.0.1:5683")
    with pytest.raises(UplinkConfigError):
        UplinkConfig.from_mapping({"lender": "coap://127.0.0.1:5683", "insecure": "yes"})

    async def scenario():
        lender = await AckLender().start()
        spool = Spool.open(tmp_path / "spool.db", synchronous="NORMAL")
        spool.append(chain(1)[0])
        config = UplinkConfig.from_mapping({"lender": lender.uri, "insecure": True, **FAST_COAP})
        results = []
        try:
            for _ in range(2):
                async with Uplink(config, spool) as uplink:
                    results.append(await uplink.send_once())
        finally:
            spool.close()
            await lender.stop()
        return results

    with caplog.at_level(logging.WARNING, logger="agent.uplink"):
        results = asyncio.run(scenario())
    assert [r.result for r in results] == [Result.DELIVERED, Result.IDLE]
    assert sum("insecure = true" in m for m in caplog.messages) == 2


@pytest.mark.parametrize("table", [
    {"lender": "http://lender.example", "insecure": True},
    {"lender": "coap://", "insecure": True},
    {"lender": "coap://l.example", "insecure": True, "batch_interval": 0},
    {"lender": "coap://l.example", "insecure": True, "max_batch_bytes": 100},
    {"lender": "coap://l.example", "insecure": True, "max_batch_count": 2.5},
    {"lender": "coap://l.example", "insecure": True, "backoff_cap": 0.5},
    {"lender": "coap://l.example", "insecure": True, "retry": 3},
    {"lender": "coap://l.example", "insecure": True, "security_context": "/etc/pledgewatch/oscore"},
    {"lender": "coap://l.example", "security_context": 5},
])
def test_an_unusable_uplink_setting_is_refused_when_the_config_is_loaded(table):
    with pytest.raises(UplinkConfigError):
        UplinkConfig.from_mapping(table) if "security_context" not in table or table.get("insecure") else \
            UplinkConfig(**table)


def test_defaults_match_the_documented_contract():
    config = UplinkConfig(security_context=Path("/etc/pledgewatch/oscore"))
    assert (config.max_batch_bytes, config.backoff_cap, config.telemetry_uri) == (
        16 * 1024, 300.0, "coap://127.0.0.1:5683/t")
