"""drivers — hardware access: the AT-command engine, modem drivers, sensors, hot-plug. No policy."""
