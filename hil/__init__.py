"""hil — the hardware-in-the-loop rig: device simulators, environment files, fault injection, the pytest plugin, reports.

`hil.sim` simulates devices (modems on pseudo-terminals, 1-Wire, NMEA);
`hil.env` describes a bench as data; `hil.bench` runs one (lender, agent,
`hil.netem` proxy, modem, nodes); `hil.faults` injects faults; `hil.invariant`
is the check every scenario ends with; `hil.report` writes what happened;
`hil.plugin` and `hil.cli` (`pledgewatch hil run`) run `hil/scenarios`.
See docs/hil.md.
"""
