"""hil.sim.onewire — a simulated 1-Wire bus: a directory laid out like /sys with DS18B20s a test controls.

    tree = OneWireTree(tmp_path)
    probe = tree.add_ds18b20(celsius=4.5)          # a cold-store probe
    DS18B20(DS18B20Config("coldstore", probe.device_id, base_dir=tree.devices_dir))
    probe.set_celsius(7.25)                          # the room warms
    probe.crc_error(); probe.power_on_reset(); probe.shorted(); probe.truncate(20)
    probe.unplug(); probe.plug()

The layout is the kernel's: `sys/devices/w1_bus_master1/28-…/w1_slave`, and
`sys/bus/w1/devices/28-…` a relative symlink to it. Every `w1_slave` is
written the way w1_therm formats it (scratchpad bytes with a correct
Dallas/Maxim CRC, the kernel's YES/NO verdict, `t=` in millidegrees) and
replaced atomically, so a reader never sees a half-written file unless a test
asks for one with `truncate`.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

from drivers.onewire import crc8_maxim

_serials = itertools.count(0x0316A2790001)

# Bytes 2-3 (TH/TL alarm registers) and 5-7 as a factory-fresh DS18B20 shows them.
_TH, _TL, _RESERVED = 0x4B, 0x46, (0xFF, 0x0C, 0x10)


def scratchpad(raw: int, resolution_bits: int = 12) -> bytes:
    """The nine scratchpad bytes for a raw temperature register value (1/16 °C), with its CRC."""
    config = 0x1F | ((resolution_bits - 9) << 5)
    first = bytes([raw & 0xFF, (raw >> 8) & 0xFF, _TH, _TL, config, *_RESERVED])
    return first + bytes([crc8_maxim(first)])


def w1_slave_text(pad: bytes, crc_ok: bool, milli_celsius: int) -> str:
    """Both lines of a w1_slave file, as the kernel's w1_therm driver prints them."""
    hex_bytes = "".join(f"{byte:02x} " for byte in pad)
    return f"{hex_bytes}: crc={pad[8]:02x} {'YES' if crc_ok else 'NO'}\n{hex_bytes}t={milli_celsius}\n"


class SimulatedDS18B20:
    """One simulated sensor; each knob rewrites its w1_slave file at once."""

    def __init__(self, tree: OneWireTree, device_id: str, celsius: float, resolution_bits: int) -> None:
        if resolution_bits not in (9, 10, 11, 12):
            raise ValueError(f"resolution_bits must be 9..12, got {resolution_bits}")
        self.tree = tree
        self.device_id = device_id
        self.resolution_bits = resolution_bits
        self.celsius = celsius
        self.plugged = False
        self.plug()

    @property
    def directory(self) -> Path:
        return self.tree.master_dir / self.device_id

    @property
    def w1_slave(self) -> Path:
        return self.directory / "w1_slave"

    def _raw(self, celsius: float) -> int:
        raw = round(celsius * 16)
        raw &= ~((1 << (12 - self.resolution_bits)) - 1)  # low bits are undefined below 12-bit: zero them
        if not -0x8000 <= raw <= 0x7FFF:
            raise ValueError(f"{celsius} C does not fit the DS18B20's 16-bit temperature register")
        return raw

    def _write(self, text: str) -> None:
        if not self.plugged:
            raise RuntimeError(f"{self.device_id} is unplugged; plug() it first")
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".w1_slave.")
        with os.fdopen(handle, "w", encoding="ascii") as out:
            out.write(text)
        os.replace(temporary, self.w1_slave)

    def set_celsius(self, celsius: float) -> None:
        """A good reading of `celsius` (rounded to the sensor's resolution)."""
        raw = self._raw(celsius)
        self.celsius = celsius
        # w1_therm computes millidegrees as raw * 1000 / 16 in C integer arithmetic.
        self._write(w1_slave_text(scratchpad(raw, self.resolution_bits), True, int(raw * 1000 / 16)))

    def crc_error(self) -> None:
        """Noise on the bus: one scratchpad byte flipped, the kernel says `crc=… NO`."""
        raw = self._raw(self.celsius)
        pad = bytearray(scratchpad(raw, self.resolution_bits))
        pad[0] ^= 0x10
        self._write(w1_slave_text(bytes(pad), False, int(raw * 1000 / 16)))

    def power_on_reset(self) -> None:
        """The sensor just powered up (or browned out): the scratchpad holds +85 °C."""
        self._write(w1_slave_text(scratchpad(0x0550, self.resolution_bits), True, 85_000))

    def shorted(self) -> None:
        """Data line shorted to ground: nine zero bytes, which pass the CRC."""
        self._write(w1_slave_text(bytes(9), True, 0))

    def truncate(self, length: int) -> None:
        """Leave only the first `length` characters of a good reading (a read cut short)."""
        raw = self._raw(self.celsius)
        text = w1_slave_text(scratchpad(raw, self.resolution_bits), True, int(raw * 1000 / 16))
        self._write(text[:length])

    def unplug(self) -> None:
        """The sensor leaves the bus: its directory and bus symlink disappear."""
        if not self.plugged:
            return
        self.plugged = False
        self.tree._link(self.device_id).unlink()
        shutil.rmtree(self.directory)
        self.tree._update_slaves()

    def plug(self) -> None:
        """The sensor (re)joins the bus and reads its current temperature."""
        if self.plugged:
            return
        self.directory.mkdir(parents=True)
        (self.directory / "name").write_text(self.device_id + "\n")
        link = self.tree._link(self.device_id)
        link.symlink_to(os.path.relpath(self.directory, link.parent))
        self.plugged = True
        self.tree._update_slaves()
        self.set_celsius(self.celsius)


class OneWireTree:
    """A sysfs-shaped directory under `root`; hand `devices_dir` to the driver as its base dir."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.master_dir = self.root / "sys" / "devices" / "w1_bus_master1"
        self.devices_dir = self.root / "sys" / "bus" / "w1" / "devices"
        self.master_dir.mkdir(parents=True, exist_ok=True)
        self.devices_dir.mkdir(parents=True, exist_ok=True)
        self.sensors: dict[str, SimulatedDS18B20] = {}
        self._update_slaves()

    def _link(self, device_id: str) -> Path:
        return self.devices_dir / device_id

    def _update_slaves(self) -> None:
        present = [device_id for device_id, sensor in getattr(self, "sensors", {}).items() if sensor.plugged]
        (self.master_dir / "w1_master_slaves").write_text("".join(f"{d}\n" for d in present) or "not found.\n")

    def add_ds18b20(
        self, device_id: str | None = None, *, celsius: float = 20.0, resolution_bits: int = 12
    ) -> SimulatedDS18B20:
        device_id = device_id or f"28-{next(_serials):012x}"
        if device_id in self.sensors:
            raise ValueError(f"{device_id} is already on this bus")
        sensor = SimulatedDS18B20(self, device_id, celsius, resolution_bits)
        self.sensors[device_id] = sensor
        self._update_slaves()
        return sensor
