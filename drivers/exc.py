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


# --- AT channel (drivers.at, drivers.transport) -----------------------------


class AtError(DriverError):
    """Base of every error raised by the AT channel."""


class AtUsageError(AtError, ValueError):
    """The caller asked for something the channel cannot send (bad command text, bad data)."""


class AtPortError(AtError, OSError):
    """The serial port could not be opened, read or written."""


class PortClosedError(AtPortError, ConnectionError):
    """The port closed or disappeared (modem reboot, USB unplug, `close()`).

    Commands in flight fail with this; the channel can be opened again.
    """


class AtTimeoutError(AtError, TimeoutError):
    """No final result code arrived within the command's timeout.

    `command` is the command text, `timeout_s` the limit, `lines` whatever
    intermediate lines had arrived before the limit.
    """

    def __init__(self, message: str, *, command: str, timeout_s: float, lines: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.command = command
        self.timeout_s = timeout_s
        self.lines = lines


class AtResultError(AtError, RuntimeError):
    """The modem ended a command with a failure result code (`ERROR` and kin).

    `command` is the command text, `result` the final result line as received,
    `lines` the intermediate lines that came before it.
    """

    def __init__(self, message: str, *, command: str, result: str, lines: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.command = command
        self.result = result
        self.lines = lines


class CmeError(AtResultError):
    """`+CME ERROR: <err>`: a mobile-termination error, 3GPP TS 27.007 §9.2.

    `code` is the numeric code (None when the modem sent only verbose text
    that matches no known code) and `meaning` the standard's wording.
    """

    def __init__(self, message: str, *, command: str, result: str, code: int | None, meaning: str,
                 lines: tuple[str, ...] = ()) -> None:
        super().__init__(message, command=command, result=result, lines=lines)
        self.code = code
        self.meaning = meaning


class CmsError(AtResultError):
    """`+CMS ERROR: <err>`: a message-service error, 3GPP TS 27.005 §3.2.5."""

    def __init__(self, message: str, *, command: str, result: str, code: int | None, meaning: str,
                 lines: tuple[str, ...] = ()) -> None:
        super().__init__(message, command=command, result=result, lines=lines)
        self.code = code
        self.meaning = meaning


class CallResultError(AtResultError):
    """A connection result ended the command: NO CARRIER, BUSY, NO ANSWER, NO DIALTONE (ITU-T V.250 §5.7.1)."""


# --- modem drivers (drivers.modem) ------------------------------------------


class ModemError(DriverError):
    """Base of errors raised by the modem drivers above the AT channel."""


class ModemResponseError(ModemError, ValueError):
    """A modem answered, but not in the form its AT manual documents.

    `command` is the command sent and `lines` the response lines received.
    """

    def __init__(self, message: str, *, command: str = "", lines: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.command = command
        self.lines = lines


class UnknownModemError(ModemError, LookupError):
    """Model detection (ATI / AT+CGMM) matched no supported modem."""
