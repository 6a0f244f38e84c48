"""Time the borrower cannot set: the lender's time, from the token in each ack, overrules a lying clock.

The story: the borrower runs the site's NTP server and sets the gateway's
clock to 10:00 so that a door opened at 03:00 looks like a permitted access.
As soon as the gateway holds a lender token, its trusted time is the lender's
(carried forward on the monotonic clock, with the exchange's round trip as
its error), the clock statement says "lender", and the opening is an alarm.
A clock that merely drifts a little stays as it is.
"""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from gpiozero.pins.mock import MockFactory
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.assets import Asset
from agent.clock import LENDER_TOLERANCE_S, Instant, TrustedClock, redate
from agent.freshness import LenderTokens
from agent.rules import SensorSpec
from drivers.gpio import ContactConfig, ContactSensor
from telemetry.clock import SOURCES
from telemetry.freshness import issue_token
from telemetry.senml import Record
from tests.kit.agent import build_agent, registered_lender, running, signed_envelopes, stored_at_lender
from tests.kit.rules import hours

THREE_AM = 1_767_582_000.0          # Monday 2026-01-05 03:00 UTC: the real time
TEN_AM = THREE_AM + 7 * 3600        # what the borrower's NTP server tells the gateway
KEY = bytes(range(32))


class Clocks:
    """A monotonic clock that moves when told, a system clock the borrower sets, the kernel saying "synced"."""

    def __init__(self, system_error: float = TEN_AM - THREE_AM) -> None:
        self.mono, self.real, self.error = 500.0, THREE_AM, system_error

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.real += seconds

    def clock(self, **options) -> TrustedClock:
        return TrustedClock(kernel_synced=lambda: True, monotonic=lambda: self.mono,
                            wall=lambda: self.real + self.error, **options)


def test_a_lender_token_overrules_the_borrowers_ntp_and_the_statement_says_lender(tmp_path):
    clocks = Clocks()
    clock = clocks.clock()
    assert clock.now() == Instant(500.0, TEN_AM, True, "ntp")  # before any ack, the lie stands
    tokens = LenderTokens(tmp_path / "lender-token", clock=clock)
    tokens.offer(issue_token(KEY, "gw-1", clocks.real - 0.3), round_trip=0.6)  # the ack arrives now
    instant = clock.now()
    assert instant.source == "lender" and instant.synced and abs(instant.wall - clocks.real) <= 1.6
    assert instant.statement().source == "lender" and "lender" in SOURCES
    clocks.advance(3600)  # carried forward on the monotonic clock
    assert abs(clock.now().wall - clocks.real) <= 1.6 and clock.now().source == "lender"
    clocks.advance(86_400)  # past the holdover without another ack: back to what the kernel says
    assert clock.now().source == "ntp"


def test_a_lender_time_also_ranks_above_a_gnss_fix_the_borrower_can_spoof():
    clocks = Clocks(system_error=0.0)
    clock = TrustedClock(kernel_synced=lambda: False, monotonic=lambda: clocks.mono, wall=lambda: clocks.real)
    clock.reference("gnss", TEN_AM)
    assert clock.now().source == "gnss" and clock.now().wall == TEN_AM
    clock.lender_time(int(THREE_AM), round_trip=0.2)
    instant = clock.now()
    assert instant.source == "lender" and abs(instant.wall - THREE_AM) < 1.0


def test_an_implausible_lender_time_is_ignored():
    clock = Clocks().clock()
    assert clock.lender_time(0, round_trip=0.1) is False and clock.now().source == "ntp"
    assert clock.lender_time(THREE_AM, round_trip=-1) is False


@settings(max_examples=200, deadline=None)
@given(error=st.floats(-30 * 86_400, 30 * 86_400), round_trip=st.floats(0, 30))
@example(error=98.0, round_trip=5.0).via("the boundary is measured from the middle of the lender's window")
def test_only_a_clock_off_by_more_than_the_tolerance_and_the_round_trip_is_overruled(error, round_trip):
    clocks = Clocks(system_error=error)
    clock = clocks.clock()
    clock.lender_time(int(clocks.real), round_trip=round_trip)
    instant = clock.now()
    lender = int(THREE_AM) + (1 + round_trip) / 2  # the middle of where the lender's time can lie
    tolerance = LENDER_TOLERANCE_S + 1 + round_trip
    off = clocks.real + error - lender            # how far the system clock is from that estimate
    if abs(off) > tolerance + 1:
        assert instant.source == "lender" and abs(instant.wall - clocks.real) <= 1 + round_trip
        assert abs(instant.offset - (lender - (clocks.real + error))) < 1e-6
    elif abs(off) < tolerance - 1:
        assert instant.source == "ntp" and instant.wall == clocks.real + error and instant.offset == 0


def test_readings_dated_by_the_lying_system_clock_move_onto_the_trusted_time(tmp_path):
    clocks = Clocks()
    clock = clocks.clock()
    clock.lender_time(int(THREE_AM), round_trip=0.0)
    instant = clock.now()
    (moved,) = redate([Record("door", boolean=True, time=TEN_AM)], instant)
    assert abs(moved.time - THREE_AM) <= 1.0
    assert redate([Record("door", boolean=True)], instant)[0].time is None


def test_the_access_hours_rule_raises_the_alarm_once_the_gateway_holds_a_lender_token(tmp_path):
    """The real agent, a real lender issuing tokens, a door contact; the borrower's clock 7 hours ahead."""
    now = time.time()
    lie = 7 * 3600.0
    fake_hour = datetime.fromtimestamp(now + lie, timezone.utc).hour
    # access is permitted for the two hours around the lying clock's time, so the real time is far outside
    window = f"daily {(fake_hour - 1) % 24:02d}:00-{(fake_hour + 2) % 24:02d}:00"
    store = Asset("cold-store", "stock", ("door",), access=hours(window))

    def door_opened_at_night(directory, lender: str | None) -> list:
        def system_clock() -> float:  # set by the borrower's NTP server
            return time.time() + lie

        factory = MockFactory()
        door = ContactSensor(ContactConfig("door", 17, settle_s=0.01, interval_s=30), pin_factory=factory,
                             wall_clock=system_clock)
        factory.pin(17).drive_low()  # closed (after the input's pull-up is set)
        time.sleep(0.05)
        lying = TrustedClock(kernel_synced=lambda: True, wall=system_clock)
        options = {"lender": lender, "uplink": {"batch_interval": 0.05, "ack_timeout": 0.5}} if lender else {}
        agent = build_agent(directory, sensors=[door], assets=[store], specs=[SensorSpec("door", "contact", 30)],
                            trusted_clock=lying, rule_tick=0.05, **options)

        async def scenario():
            deadline = time.monotonic() + 10
            while lender and agent.tokens.token is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # the first ack brings the lender's token
            factory.pin(17).drive_high()  # the door opens
            await asyncio.sleep(0.4)
            factory.pin(17).drive_low()
            await asyncio.sleep(0.3)

        asyncio.run(running(agent, scenario))
        door.close()
        found = signed_envelopes(agent) if len(agent.spool) else []
        agent.spool.close(), agent.state.close()
        return found

    (tmp_path / "alone").mkdir()
    alone = door_opened_at_night(tmp_path / "alone", None)
    names = [(r.name, r.string) for e in alone for r in e.records]
    assert ("event.door.cold-store", "opened") in names  # without the lender, the lie makes it look permitted
    assert not any(name.startswith("alarm.door") for name, _ in names)

    (tmp_path / "gateway").mkdir()
    with registered_lender(tmp_path / "lender") as lender:
        door_opened_at_night(tmp_path / "gateway", f"coap://127.0.0.1:{lender.port}")
        stored = stored_at_lender(tmp_path / "lender")
    alarm = [e for e in stored if any(r.name == "alarm.door.cold-store" and r.string == "raised" for r in e.records)]
    assert alarm, [[r.name for r in e.records] for e in stored]
    statement = alarm[0].clock_statement
    assert statement.synced and statement.source == "lender" and alarm[0].token is not None
    opened = [r for e in stored for r in e.records if r.name == "door" and r.boolean]
    # the reading's time came from the system clock (the lie): it is moved onto the lender's time line
    assert opened and abs(opened[0].time - time.time()) < 60
