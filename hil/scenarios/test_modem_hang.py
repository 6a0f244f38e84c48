"""Scenario (e): the modem hangs, and the recovery ladder brings it back.

The modem's firmware hangs: it stops answering AT commands, and the data
link through it goes down with it. The recovery ladder is climbed rung by
rung on the modem's AT port (the path the environment file names: a
simulator's pty, a simulator behind socat, or a real /dev/ttyUSB2):

1. detect: ``AT`` times out;
2. re-sync: close and reopen the port, ``AT`` again — still nothing;
3. soft reset: ``AT+CFUN=1,1`` — a hung firmware ignores it too;
4. power cycle through the modem's relay: the port vanishes and returns, the
   modem answers, identifies itself as the same model and registers again.

Then the link is back, the agent's backlog from the hang drains, and the
lender holds every reading exactly once.

The agent's own modem health monitor (which will climb this ladder by itself)
is not built yet: until it is, the scenario climbs the ladder through the
drivers stack (`drivers.at.AtChannel`, `drivers.modem.open_modem`) exactly as
the monitor would, and checks each rung's outcome.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from drivers.at import AtChannel, ChannelConfig
from drivers.exc import AtTimeoutError, PortClosedError, PortError
from drivers.modem import open_modem

pytestmark = pytest.mark.needs("agent", "lender", "network_faults", "modem", "modem_faults", "power_relay")

HANG_DETECT_S = 1.0


async def at_ok(channel: AtChannel, timeout: float = HANG_DETECT_S) -> bool:
    """True if the modem answers ``AT`` with OK in time; False on a timeout (a lost port propagates)."""
    try:
        await channel.command("AT", timeout=timeout)
        return True
    except AtTimeoutError:
        return False


async def reopen(port: str, timeout: float = 15.0) -> AtChannel:
    """Open the AT port, waiting for it to (re)appear, as after a USB re-enumeration."""
    deadline = time.monotonic() + timeout
    while True:
        channel = AtChannel(ChannelConfig(port, default_timeout_s=2.0))
        try:
            await channel.open()
            return channel
        except PortError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def climb_the_ladder(bench) -> list[tuple[str, str]]:
    """Detect the hang and recover from it; returns (rung, outcome) for each rung climbed."""
    rungs = []
    channel = await reopen(bench.modem_port)
    try:
        assert not await at_ok(channel), "a hung modem answered AT"
        rungs.append(("detect", "AT timed out"))

        await channel.close()
        channel = await reopen(bench.modem_port)
        answered = await at_ok(channel)
        rungs.append(("re-sync the port", "answered" if answered else "still no answer"))
        assert not answered

        try:
            await channel.command("AT+CFUN=1,1", timeout=HANG_DETECT_S)
            rungs.append(("soft reset AT+CFUN=1,1", "accepted"))
        except AtTimeoutError:
            rungs.append(("soft reset AT+CFUN=1,1", "no answer"))
        assert rungs[-1][1] == "no answer", "a hung modem took a soft reset"

        await asyncio.to_thread(bench.relay.power_cycle)
        try:
            await channel.command("AT", timeout=HANG_DETECT_S)
            port_lost = False
        except (PortClosedError, AtTimeoutError):
            port_lost = True
        await channel.close()
        rungs.append(("power cycle via the relay", "port lost and back" if port_lost else "port stayed"))

        channel = await reopen(bench.modem_port)
        deadline = time.monotonic() + 20
        while not await at_ok(channel, timeout=1.0):  # a modem answers a few seconds after its port is back
            assert time.monotonic() < deadline, "the modem does not answer after its power cycle"
        modem = await open_modem(channel)
        registration = await modem.registration()
        rungs.append(("after the power cycle", f"{modem.identity.manufacturer} {modem.identity.model}, "
                                               f"registration {registration.status.name}"))
        assert registration.registered, registration
        return rungs
    finally:
        await channel.close()


def test_a_hung_modem_is_recovered_by_the_ladder_and_the_backlog_drains(bench, hil_profile):
    hang_s = hil_profile.pick(short=4.0, long=120.0)
    identity_before = asyncio.run(identify(bench.modem_port))
    bench.run_for(2)

    bench.modem.hang()
    bench.network.partition()           # a hung modem carries no data
    bench.run_for(hang_s)
    rungs = asyncio.run(climb_the_ladder(bench))
    bench.network.heal()
    for rung, outcome in rungs:
        bench.note(f"ladder: {rung}", outcome)

    assert bench.relay.cycles == 1
    assert rungs[-1][1].split(",")[0] == identity_before, rungs
    bench.wait_delivered(timeout=60)
    bench.finish(drain_timeout=60)


async def identify(port: str) -> str:
    channel = await reopen(port)
    try:
        modem = await open_modem(channel)
        return f"{modem.identity.manufacturer} {modem.identity.model}"
    finally:
        await channel.close()
