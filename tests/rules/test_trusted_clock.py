"""Time you can trust: wall time only while synchronized, the clock statement in every envelope, jumps that break nothing."""
import asyncio
import datetime as dt
import subprocess

import pytest

from telemetry.clock import SOURCE as CLOCK_SOURCE, SYNCED as CLOCK_SYNCED, SYSTEM as CLOCK_SYSTEM, UPTIME_MS as CLOCK_UPTIME_MS
from agent.clock import (Instant, TrustedClock,
                         adjtimex_synced, stamp, timedatectl_synced)
from drivers.modem.generic import parse_cclk
from telemetry.chain import check_chain
from telemetry.envelope import decode
from telemetry.senml import Record
from tests.kit.agent import build_agent, running, signed_envelopes

T0 = 1_767_571_200.0


class Clocks:
    """A fake monotonic clock, a wall clock that can be made to jump, and a scripted kernel answer."""

    def __init__(self) -> None:
        self.mono, self.wall, self.kernel, self.kernel_asked = 100.0, T0, False, 0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def kernel_synced(self) -> bool:
        self.kernel_asked += 1
        return self.kernel

    def clock(self, **options) -> TrustedClock:
        return TrustedClock(kernel_synced=self.kernel_synced, monotonic=lambda: self.mono, wall=lambda: self.wall, **options)


def test_a_synchronized_kernel_clock_is_trusted_and_said_so():
    clocks = Clocks()
    clocks.kernel = True
    instant = clocks.clock().now()
    assert instant == Instant(100.0, T0, True, "ntp")
    assert instant.statement().to_cbor() == {CLOCK_SYNCED: True, CLOCK_SOURCE: "ntp", CLOCK_UPTIME_MS: 100_000}


def test_without_any_source_the_time_is_unsynchronized_and_records_lose_their_times():
    instant = Clocks().clock().now()
    assert not instant.synced and instant.trusted_wall is None
    assert instant.statement().to_cbor() == {CLOCK_SYNCED: False, CLOCK_SOURCE: "none", CLOCK_UPTIME_MS: 100_000, CLOCK_SYSTEM: int(T0)}
    records = stamp([Record("temp", value=4.5, unit="Cel", time=T0), Record("door", boolean=False, time=T0)], instant)
    assert [r.time for r in records] == [None, None] and records[0].value == 4.5


def test_a_gnss_time_reference_synchronizes_and_carries_forward_on_the_monotonic_clock():
    clocks = Clocks()
    clock = clocks.clock(holdover_s=3600)
    clocks.wall = T0 - 400 * 86400  # a gateway whose RTC battery died: the system clock is a year off
    assert clock.reference("gnss", dt.datetime.fromtimestamp(T0, dt.timezone.utc), age_s=0.5)
    instant = clock.now()
    assert instant.synced and instant.source == "gnss" and instant.wall == pytest.approx(T0 + 0.5)
    clocks.advance(1800)
    assert clock.now().wall == pytest.approx(T0 + 1800.5)  # reference + elapsed, not the broken system clock
    clocks.advance(1801)
    assert not clock.now().synced  # past the holdover


def test_a_system_clock_that_agrees_with_the_reference_is_used_as_is():
    clocks = Clocks()
    clock = clocks.clock()
    clock.reference("modem", T0 - 1.2)
    instant = clock.now()
    assert instant.synced and instant.source == "modem" and instant.wall == T0


def test_gnss_is_preferred_over_the_modems_network_time():
    clocks = Clocks()
    clock = clocks.clock()
    clock.reference("modem", T0 + 30)
    clock.reference("gnss", T0)
    assert clock.now().source == "gnss"


def test_a_modem_that_never_had_network_time_is_not_a_reference():
    clock = Clocks().clock()
    for default in ('"80/01/06,00:00:29+00"', '"70/01/01,00:00:05+00"', '"04/01/01,00:01:00+00"'):  # before NITZ
        assert not clock.reference("modem", parse_cclk([f"+CCLK: {default}"]))
    assert not clock.now().synced
    with pytest.raises(ValueError, match="allowed: gnss, modem"):
        clock.reference("sundial", T0)


def test_a_modems_network_time_with_its_zone_is_read_as_utc():
    clocks = Clocks()
    clock = clocks.clock()
    local = parse_cclk(['+CCLK: "26/01/05,01:00:00+04"'])  # 01:00 at UTC+1 (4 quarter hours) = 00:00 UTC
    assert clock.reference("modem", local)
    assert clock.now().wall == pytest.approx(T0, abs=1)


def test_the_kernel_is_asked_again_only_every_recheck_interval():
    clocks = Clocks()
    clock = clocks.clock(recheck_s=30)
    for _ in range(100):
        clock.now()
        clocks.advance(0.1)
    assert clocks.kernel_asked == 1
    clocks.kernel = True
    clocks.advance(25)
    assert clock.now().synced and clocks.kernel_asked == 2


def test_the_kernel_and_systemd_views_can_be_read_here():
    assert isinstance(adjtimex_synced(), bool)

    def answers(text, code=0):
        return lambda *a, **k: subprocess.CompletedProcess(a, code, stdout=text, stderr="")

    assert timedatectl_synced(answers("yes\n")) is True
    assert timedatectl_synced(answers("no\n")) is False
    assert timedatectl_synced(answers("", 1)) is False

    def missing(*a, **k):
        raise FileNotFoundError("timedatectl")

    assert timedatectl_synced(missing) is False


@pytest.mark.parametrize("jumps", [[-3600.0], [+86400.0], [-3600.0, +7200.0, -1.0], [+400 * 86400.0, -400 * 86400.0]])
def test_a_clock_jump_never_breaks_seq_order_or_the_chain(tmp_path, jumps):
    """The agent records every second while the wall clock jumps; synced and unsynced phases alternate."""
    clocks = Clocks()
    agent = build_agent(tmp_path, clock=lambda: clocks.wall, trusted_clock=clocks.clock(recheck_s=0.0), recording=True)
    written = []
    for step in range(40):
        clocks.kernel = (step // 5) % 2 == 0
        if step in (10, 20, 30) and jumps:
            clocks.wall += jumps[(step // 10 - 1) % len(jumps)]
        written.append(agent.record([Record("temp", value=4.0 + step / 8, unit="Cel", time=clocks.wall)]))
        clocks.advance(1.0)
    envelopes = signed_envelopes(agent)
    assert [e.seq for e in envelopes] == list(range(1, 41)) and check_chain(envelopes).intact
    uptimes = [e.clock[CLOCK_UPTIME_MS] for e in envelopes]
    assert uptimes == sorted(uptimes) and len(set(uptimes)) == 40  # the lender can order them without wall time
    for envelope in envelopes:
        decoded = decode(envelope.raw)
        (record,) = decoded.records
        if decoded.clock[CLOCK_SYNCED]:
            assert decoded.clock[CLOCK_SOURCE] == "ntp" and record.time is not None
        else:
            assert record.time is None and CLOCK_SYSTEM in decoded.clock
    agent.spool.close()
    agent.state.close()


def test_the_agent_records_a_gnss_fix_time_as_a_reference(tmp_path):
    """A receiver with a fix makes an unsynchronized gateway trust its time (drivers.gnss → agent.clock)."""
    from drivers.gnss import GnssConfig, GnssReceiver
    from hil.sim.nmea import NmeaFeed

    clocks = Clocks()
    clocks.wall = T0 - 400 * 86400
    trusted = clocks.clock()
    with NmeaFeed(latitude=52.52, longitude=13.405, utc=lambda: dt.datetime.fromtimestamp(T0, dt.timezone.utc)) as feed:
        receiver = GnssReceiver(GnssConfig(feed.path, interval_s=0.05))
        agent = build_agent(tmp_path, sensors=[receiver], trusted_clock=trusted)

        async def scenario():
            await asyncio.wait_for(receiver.wait_until(lambda c: c.opens >= 1), 5)
            for _ in range(30):
                feed.emit_epoch()
                await asyncio.sleep(0.05)
                if trusted.now().synced:
                    break

        asyncio.run(running(agent, scenario))
    instant = trusted.now()
    assert instant.synced and instant.source == "gnss"
    assert instant.wall == pytest.approx(T0, abs=2)  # the receiver's UTC, not the system clock 400 days off
    agent.spool.close()
    agent.state.close()
