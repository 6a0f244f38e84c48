"""After a restart the lender's time is gone until the next ack: a device that holds a lender token permits nothing then.

The borrower's move: the gateway has heard the lender (it holds a token), so
they cut the uplink, set the gateway's clock into the access hours (their NTP
server says "synced") and restart the agent. The lender's time does not
survive a restart (it is carried on the monotonic clock of the run that
heard it), so until an ack brings it again the time is the borrower's, and
the access-hours rule must not take it as permission. A device that never
heard the lender keeps judging on the best time it has.
"""
from __future__ import annotations

from agent.assets import Asset
from agent.clock import TrustedClock
from agent.freshness import LenderTokens
from agent.rules import AccessEvent
from telemetry.freshness import issue_token
from tests.kit.rules import BOOT, HOUR, T0, alarms, engine, hours, sample

NIGHT = T0 + 3 * HOUR          # Monday 03:00 UTC, the real time
STORE = Asset("cold-store", "stock", ("door",), access=hours("mon-fri 09:00-11:00"))
KEY = bytes(range(32))


def lying_clock(mono: list[float], **options) -> TrustedClock:
    """The borrower's NTP: "synced", seven hours ahead (10:00, inside the access hours)."""
    return TrustedClock(kernel_synced=lambda: True, monotonic=lambda: mono[0],
                        wall=lambda: NIGHT + 7 * HOUR + (mono[0] - BOOT), **options)


def held_token(tmp_path) -> LenderTokens:
    """The token file an earlier run kept (agent.freshness), as the next run loads it."""
    (tmp_path / "lender-token").write_bytes(issue_token(KEY, "gw-1", NIGHT - HOUR))
    return LenderTokens(tmp_path / "lender-token")


def door_opened(clock: TrustedClock):
    rules = engine([STORE], [("door", "contact", 24 * HOUR)])
    instant = clock.now()
    return instant, rules.observe([sample("door", True, instant.wall - T0)], instant)


def test_a_restarted_gateway_that_holds_a_token_takes_no_permission_from_its_ntp_time(tmp_path):
    mono = [BOOT]
    clock = lying_clock(mono)
    LenderTokens(held_token(tmp_path).path, clock=clock)   # the agent starts: the token file is loaded
    instant, emitted = door_opened(clock)
    assert instant.synced and instant.source == "ntp" and instant.awaiting_lender   # records keep the (lying) time
    assert alarms(emitted) == [("alarm.door.cold-store", "raised")]
    assert "(no lender time since the agent started)" in emitted[0].detail


def test_the_next_ack_brings_the_lenders_time_and_access_is_judged_on_it(tmp_path):
    mono = [BOOT]
    clock = lying_clock(mono)
    tokens = LenderTokens(held_token(tmp_path).path, clock=clock)
    tokens.offer(issue_token(KEY, "gw-1", NIGHT), round_trip=0.2)
    instant = clock.now()
    assert instant.source == "lender" and not instant.awaiting_lender
    assert abs(instant.wall - NIGHT) < 2     # 03:00 it is: the opening is an alarm on the lender's time
    assert alarms(door_opened(clock)[1]) == [("alarm.door.cold-store", "raised")]


def test_an_honest_clock_that_agrees_with_the_lender_permits_access_in_the_hours(tmp_path):
    mono = [BOOT]
    morning = NIGHT + 7 * HOUR
    clock = TrustedClock(kernel_synced=lambda: True, monotonic=lambda: mono[0], wall=lambda: morning)
    LenderTokens(held_token(tmp_path).path, clock=clock).offer(issue_token(KEY, "gw-1", int(morning)), round_trip=0.2)
    instant, emitted = door_opened(clock)
    assert instant.source == "ntp" and not instant.awaiting_lender
    assert [(e.name, e.state) for e in emitted if isinstance(e, AccessEvent)] == [("event.door.cold-store", "opened")]


def test_past_its_holdover_the_lenders_time_is_awaited_again(tmp_path):
    mono = [BOOT]
    clock = lying_clock(mono, holdover_s=3600)
    LenderTokens(tmp_path / "lender-token", clock=clock).offer(issue_token(KEY, "gw-1", NIGHT), round_trip=0.2)
    assert not clock.now().awaiting_lender
    mono[0] += 2 * HOUR                      # two hours without an ack: the lender's time is past its holdover
    assert clock.now().awaiting_lender and clock.now().source == "ntp"


def test_a_gateway_that_never_heard_the_lender_judges_on_the_best_time_it_has():
    clock = lying_clock([BOOT])
    instant, emitted = door_opened(clock)
    assert not instant.awaiting_lender
    assert [(e.name, e.state) for e in emitted if isinstance(e, AccessEvent)] == [("event.door.cold-store", "opened")]
