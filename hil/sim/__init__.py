"""hil.sim — device simulators: modems, 1-Wire, NMEA."""
