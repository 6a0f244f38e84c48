"""The drivers package's one exception tree.

Every error a driver raises derives from `DriverError`; leaves also subclass
the matching builtin (`TimeoutError`, `ValueError`, `OSError`) so callers that
only know the builtin still catch them. Add new leaves here, never elsewhere.
"""
from __future__ import annotations


class DriverError(Exception):
    """Base of every error raised by `drivers`."""


# --- sensors, GNSS, GPIO, hot-plug (drivers.sensor, .gpio, .onewire, .gnss, .hotplug) ---


class SensorFault(DriverError):
    """A sensor could not give a trustworthy reading; the agent reports it and polls the others.

    `sensor` names the sensor (the `name` of its config) so a fault can be reported
    as telemetry without the caller keeping track of which read raised it.
    """

    def __init__(self, sensor: str, message: str) -> None:
        super().__init__(f"sensor {sensor!r}: {message}")
        self.sensor = sensor


class SensorMissing(SensorFault, FileNotFoundError):
    """The sensor's device is not there: a 1-Wire device left the bus, a serial port vanished."""


class SensorDataInvalid(SensorFault, ValueError):
    """The sensor answered, but with data that must not be used (bad CRC, power-on value, out of range)."""


class SensorSilent(SensorFault, TimeoutError):
    """The sensor gave nothing fresh in time: a read that hung, a GNSS fix older than allowed."""


class SensorCrashed(SensorFault, RuntimeError):
    """A sensor's read raised something that is not a SensorFault: a bug, contained so the others go on."""


class GnssNoFix(SensorFault, LookupError):
    """The GNSS receiver is talking but has no position (GGA quality 0, RMC status V)."""


class NmeaError(DriverError, ValueError):
    """An NMEA 0183 sentence that cannot be used; the reader counts it and skips it."""


class NmeaChecksumError(NmeaError):
    """The sentence's `*hh` checksum does not match the XOR of its characters."""


class NmeaFormatError(NmeaError):
    """The sentence is not NMEA 0183 framing, or one of its fields is malformed."""


class GpioConfigError(DriverError, ValueError):
    """A GPIO device description (pin, timing) is invalid."""


class HotplugError(DriverError, OSError):
    """The udev monitor could not be set up or read."""
