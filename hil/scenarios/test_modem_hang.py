"""Scenario (e): the modem hangs, the agent climbs its recovery ladder, and the power relay brings the modem back.

The modem's firmware hangs: it answers no AT command, and the data link
through it goes down with it. The agent's modem health monitor notices
(its probe times out) and climbs its ladder: re-query, AT+CFUN=0/1, then
AT+CFUN=1,1 — none of which a hung firmware obeys. On a bench where the
agent has no power line of its own, it then raises a signed
``alarm.modem-down.gateway`` and only probes slowly. The bench's power relay
cuts the modem's power (a hardware watchdog, or the technician); the modem
comes back, the agent's next probe finds it answering and clears the alarm,
the link returns and the backlog drains.

Everything is observed as a lender would: the monitor's own signed records
(``modem.health``, ``modem.recovery``, the alarm) at the lender, and the
alarm while the link is down in the agent's spool. The AT port is whatever
the environment file names (a simulator's pty, one behind socat, a real port).
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.needs("agent", "lender", "network_faults", "modem", "modem_faults", "power_relay")

MODEM_DOWN = "alarm.modem-down.gateway"


def alarm_in_spool(bench, state: str) -> bool:
    return any(r.name == MODEM_DOWN and r.string == state for e in bench.spooled_envelopes() for r in e.records)


def readings(bench, name: str) -> list[dict]:
    return [r for r in bench.lender.readings(bench.device) if r["name"] == name]


def test_a_hung_modem_is_recovered_through_the_agents_ladder_and_the_relay(bench, hil_profile):
    monitor = bench.env.gateway.modem
    bench.wait_until(lambda: any(r["string"] == "ok" for r in readings(bench, "modem.health")), timeout=30,
                     what="the agent's first healthy modem status at the lender")

    bench.modem.hang()
    bench.network.partition()                      # a hung modem carries no data
    climbed = bench.wait_until(lambda: alarm_in_spool(bench, "raised"), timeout=hil_profile.pick(60, 300),
                               what="the agent to give up on its ladder and raise the modem-down alarm")
    bench.note("ladder climbed, alarm raised after", f"{climbed:.1f} s")
    bench.run_for(hil_profile.pick(short=2.0, long=120.0))  # down: the agent only probes, slowly

    bench.relay.power_cycle()
    bench.network.heal()
    recovered = bench.wait_until(lambda: any(r["string"] == "cleared" for r in readings(bench, MODEM_DOWN)),
                                 timeout=30 + 2 * monitor.get("slow_probe_s", 900),
                                 what="the agent to find the modem answering and clear the alarm")
    bench.note("modem answering again after the power cycle", f"{recovered:.1f} s")
    bench.wait_delivered(timeout=60)
    bench.finish(drain_timeout=60)

    rungs = [r["string"] for r in readings(bench, "modem.recovery")]
    assert rungs[:3] == ["requery", "cfun-cycle", "reboot"], rungs
    assert [r["string"] for r in readings(bench, MODEM_DOWN)] == ["raised", "cleared"]
    health = [r["string"] for r in readings(bench, "modem.health")]
    assert "down" in health and health[-1] == "ok", health
    assert bench.relay.cycles == 1
    bench.note("ladder at the lender", " → ".join(rungs) + " → down → relay power cycle → ok")
