"""One sick sensor never stops the others: read_each over real drivers with real faults."""
from __future__ import annotations

import asyncio
import os

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from drivers.exc import SensorCrashed, SensorDataInvalid, SensorMissing, SensorSilent
from drivers.gnss import GnssConfig, GnssReceiver
from drivers.gpio import ContactConfig, ContactSensor
from drivers.onewire import DS18B20, DS18B20Config
from drivers.sensor import Sample, read_each
from hil.sim.nmea import NmeaFeed
from hil.sim.onewire import OneWireTree

NOW = 1_700_000_000.0


class BuggySensor:
    """A driver with a bug: its read raises something that is not a SensorFault."""

    name = "buggy"
    interval = 60.0

    async def read(self) -> list[Sample]:
        return {}["missing"]


@pytest.fixture
def pins():
    factory = MockFactory()
    previous, Device.pin_factory = Device.pin_factory, factory
    yield factory
    factory.reset()
    Device.pin_factory = previous


def test_missing_hung_silent_and_buggy_sensors_become_faults_while_the_rest_report(tmp_path, pins):
    tree = OneWireTree(tmp_path / "w1")
    coldstore = tree.add_ds18b20(celsius=3.5)
    unplugged = tree.add_ds18b20()
    unplugged.unplug()
    hung = tree.add_ds18b20()
    hung.w1_slave.unlink()
    os.mkfifo(hung.w1_slave)  # a sysfs read that never returns, like a wedged bus master
    crc = tree.add_ds18b20()
    crc.crc_error()

    def probe(name, sim):
        return DS18B20(DS18B20Config(name, sim.device_id, base_dir=tree.devices_dir), wall_clock=lambda: NOW)

    door = ContactSensor(ContactConfig("door", 17), wall_clock=lambda: NOW)

    async def scenario():
        with NmeaFeed() as feed:  # a receiver that never sends anything
            gnss = GnssReceiver(GnssConfig(url=feed.port))
            reader = asyncio.create_task(gnss.watch())
            sensors = [
                probe("coldstore", coldstore), probe("yard", unplugged), probe("hung", hung), probe("noisy", crc),
                gnss, door, BuggySensor(),
            ]
            try:
                return await read_each(sensors, timeout=0.2)
            finally:
                reader.cancel()
                # Let the hung read finish so the thread pool can shut down.
                os.close(os.open(hung.w1_slave, os.O_WRONLY | os.O_NONBLOCK))

    results = asyncio.run(scenario())
    assert results["coldstore"] == [Sample("coldstore", 3.5, "Cel", NOW)]
    assert results["door"] == [Sample("door", True, None, NOW)]
    assert isinstance(results["yard"], SensorMissing)
    assert isinstance(results["hung"], SensorSilent) and "0.2 s" in str(results["hung"])
    assert isinstance(results["noisy"], SensorDataInvalid)
    assert isinstance(results["gnss"], SensorSilent) and "no NMEA" in str(results["gnss"])
    assert isinstance(results["buggy"], SensorCrashed) and isinstance(results["buggy"].__cause__, KeyError)
    assert {fault.sensor for fault in results.values() if not isinstance(fault, list)} == {
        "yard", "hung", "noisy", "gnss", "buggy"
    }


def test_sensor_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        asyncio.run(read_each([BuggySensor(), BuggySensor()], timeout=1))


@pytest.mark.parametrize(
    ("name", "value", "time"),
    [("", 1.0, 0.0), ("-lead", 1.0, 0.0), ("a b", 1.0, 0.0), ("t", float("nan"), 0.0), ("t", 1.0, float("inf")),
     ("t", None, 0.0), ("t", 1.0, True)],
)
def test_a_sample_refuses_what_senml_could_not_carry(name, value, time):
    with pytest.raises((ValueError, TypeError)):
        Sample(name, value, None, time)
