"""drivers.onewire — DS18B20 temperature sensors through the Linux w1 sysfs interface.

The kernel's w1_therm driver exposes each sensor as
`/sys/bus/w1/devices/28-<serial>/w1_slave`; reading that file makes the sensor
convert (up to 750 ms at 12-bit resolution) and returns two lines:

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

the nine scratchpad bytes with the kernel's CRC verdict, then the same bytes
with the temperature in millidegrees Celsius. `parse_w1_slave` is the pure
parser; `DS18B20` reads the file off the event loop and turns every way it can
go wrong into a `SensorFault`:

* CRC verdict `NO`, or a CRC byte that does not match the bytes (noise on a
  long cable, a missing 4.7 kΩ pull-up) → `SensorDataInvalid`;
* 85.000 °C, the scratchpad's power-on reset value (DS18B20 datasheet,
  "Operation — Measuring Temperature": a read before any conversion returns
  +85 °C; a brown-out during conversion does the same) → `SensorDataInvalid`;
* an all-zero scratchpad, which passes the CRC (the CRC of zeros is zero) but
  is what a data line shorted to ground reads → `SensorDataInvalid`;
* outside the datasheet's −55…+125 °C range → `SensorDataInvalid`;
* a truncated or garbled file → `SensorDataInvalid`;
* the device directory gone (sensor unplugged, bus master reset) → `SensorMissing`.
"""
from __future__ import annotations

import asyncio
import errno
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from drivers.exc import SensorDataInvalid, SensorMissing
from drivers.sensor import Sample

W1_DEVICES = Path("/sys/bus/w1/devices")

DS18B20_FAMILY = "28"
POWER_ON_MILLI_CELSIUS = 85_000
MIN_MILLI_CELSIUS = -55_000
MAX_MILLI_CELSIUS = 125_000

_DEVICE_ID = re.compile(r"28-[0-9a-f]{12}\Z")
_BYTES = r"((?:[0-9a-f]{2} ){9})"
_CRC_LINE = re.compile(_BYTES + r": crc=([0-9a-f]{2}) (YES|NO)\Z")
_TEMP_LINE = re.compile(_BYTES + r"t=(-?[0-9]{1,7})\Z")


def crc8_maxim(data: bytes) -> int:
    """The Dallas/Maxim 1-Wire CRC-8 (polynomial x^8 + x^5 + x^4 + 1, reflected 0x8C)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def parse_w1_slave(text: str, sensor: str = "ds18b20") -> float:
    """Return the temperature in °C from a w1_slave file's text, or raise SensorDataInvalid.

    `sensor` names the sensor in the error message.
    """
    lines = text.split("\n")
    if len(lines) != 3 or lines[2] != "":
        raise SensorDataInvalid(
            sensor,
            f"w1_slave should hold exactly two newline-terminated lines, got {text[:120]!r}; "
            "the read was cut short or the device is not a DS18B20",
        )
    crc_line = _CRC_LINE.match(lines[0])
    temp_line = _TEMP_LINE.match(lines[1])
    if crc_line is None or temp_line is None:
        raise SensorDataInvalid(
            sensor, f"w1_slave is not in the w1_therm format: {text[:120]!r}; check the kernel's w1_therm driver"
        )
    scratchpad = bytes.fromhex(crc_line.group(1))
    if temp_line.group(1) != crc_line.group(1):
        raise SensorDataInvalid(sensor, "the two w1_slave lines carry different scratchpads; read again")
    if crc_line.group(3) != "YES":
        raise SensorDataInvalid(
            sensor,
            "the kernel reports a CRC error (crc=… NO): check the cable, the 4.7 kOhm pull-up and the power",
        )
    if crc8_maxim(scratchpad[:8]) != scratchpad[8] or int(crc_line.group(2), 16) != scratchpad[8]:
        raise SensorDataInvalid(sensor, f"scratchpad {scratchpad.hex(' ')} fails the 1-Wire CRC; read again")
    if not any(scratchpad):
        raise SensorDataInvalid(
            sensor, "the scratchpad is all zeros (it passes the CRC): the data line is shorted to ground"
        )
    milli = int(temp_line.group(2))
    if milli == POWER_ON_MILLI_CELSIUS:
        raise SensorDataInvalid(
            sensor,
            "85.000 C is the DS18B20's power-on value, not a measurement: the sensor reset or lacks power; "
            "the next read normally recovers",
        )
    if not MIN_MILLI_CELSIUS <= milli <= MAX_MILLI_CELSIUS:
        raise SensorDataInvalid(
            sensor, f"{milli / 1000:.3f} C is outside the DS18B20's -55..125 C range: the reading is corrupt"
        )
    return milli / 1000


def discover(base_dir: Path = W1_DEVICES) -> list[str]:
    """The DS18B20 device ids present under `base_dir`, sorted; empty if there is no w1 bus."""
    try:
        names = [entry.name for entry in base_dir.iterdir()]
    except FileNotFoundError:
        return []
    return sorted(name for name in names if _DEVICE_ID.match(name))


@dataclass(frozen=True, slots=True)
class DS18B20Config:
    """One DS18B20: the sample `name`, its 1-Wire id (`28-` + 12 hex digits), where the w1 devices live."""

    name: str
    device_id: str
    base_dir: Path = field(default=W1_DEVICES)
    interval_s: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.device_id, str) or not _DEVICE_ID.match(self.device_id):
            raise ValueError(
                f"{self.name}: 1-Wire id {self.device_id!r} is not a DS18B20 id ('28-' and 12 lowercase hex digits); "
                f"list {W1_DEVICES} to find it"
            )
        if not self.interval_s >= 1:  # a 12-bit conversion alone takes 750 ms
            raise ValueError(f"{self.name}: interval_s {self.interval_s!r} must be >= 1 s")
        object.__setattr__(self, "base_dir", Path(self.base_dir))

    @property
    def path(self) -> Path:
        return self.base_dir / self.device_id / "w1_slave"


class DS18B20:
    """A DS18B20 read through sysfs; `read()` yields one `Sample(name, °C, "Cel", time)`."""

    def __init__(self, config: DS18B20Config, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.name = config.name
        self.interval = config.interval_s
        self._wall_clock = wall_clock

    def read_now(self) -> Sample:
        """Read synchronously (blocks for the conversion); raises SensorMissing or SensorDataInvalid."""
        path = self.config.path
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise SensorMissing(
                self.name, f"{path} does not exist: the sensor {self.config.device_id} is not on the 1-Wire bus"
            ) from exc
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO, errno.EIO):
                raise SensorMissing(self.name, f"{path} vanished while being read ({exc.strerror})") from exc
            raise SensorMissing(self.name, f"cannot read {path}: {exc}") from exc
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise SensorDataInvalid(self.name, f"w1_slave holds non-ASCII bytes {raw[:40]!r}") from exc
        return Sample(self.name, parse_w1_slave(text, self.name), "Cel", self._wall_clock())

    async def read(self) -> list[Sample]:
        # The read blocks for the whole conversion: keep it off the event loop.
        return [await asyncio.to_thread(self.read_now)]
