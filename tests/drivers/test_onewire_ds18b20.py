"""DS18B20 temperature probes through a simulated sysfs 1-Wire tree, faults included."""
from __future__ import annotations

import asyncio
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.exc import DriverError, SensorDataInvalid, SensorFault, SensorMissing
from drivers.onewire import DS18B20, DS18B20Config, crc8_maxim, discover, parse_w1_slave
from drivers.sensor import Sample, Sensor
from hil.sim.onewire import OneWireTree, scratchpad, w1_slave_text

NOW = 1_700_000_000.0

# A w1_slave as the kernel prints it for 23.125 C (raw 0x0172), and the
# power-on value 85 C (raw 0x0550); both scratchpads carry valid CRCs.
GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
POWER_ON = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"


@pytest.fixture
def tree(tmp_path) -> OneWireTree:
    return OneWireTree(tmp_path)


def probe_driver(tree: OneWireTree, device_id: str, name: str = "coldstore") -> DS18B20:
    return DS18B20(DS18B20Config(name, device_id, base_dir=tree.devices_dir), wall_clock=lambda: NOW)


def test_the_crc_of_a_kernel_sample_scratchpad_checks_out():
    assert crc8_maxim(bytes.fromhex("72014b467fff0e10")) == 0x57
    assert parse_w1_slave(GOOD) == 23.125


def test_cold_store_probe_reads_its_temperature(tree):
    probe = tree.add_ds18b20(celsius=4.5)
    sensor = probe_driver(tree, probe.device_id)
    assert isinstance(sensor, Sensor)
    assert asyncio.run(sensor.read()) == [Sample("coldstore", 4.5, "Cel", NOW)]
    probe.set_celsius(7.25)
    assert sensor.read_now().value == 7.25


@pytest.mark.parametrize(
    ("celsius", "bits", "expected"),
    [(-10.125, 12, -10.125), (-55.0, 12, -55.0), (125.0, 12, 125.0), (21.3, 9, 21.0), (21.3, 11, 21.25)],
)
def test_probe_reads_negative_extreme_and_low_resolution_values(tree, celsius, bits, expected):
    probe = tree.add_ds18b20(celsius=celsius, resolution_bits=bits)
    assert probe_driver(tree, probe.device_id).read_now().value == expected


def test_a_crc_error_on_the_bus_is_rejected_with_a_hint(tree):
    probe = tree.add_ds18b20(celsius=4.5)
    probe.crc_error()
    with pytest.raises(SensorDataInvalid, match="CRC.*pull-up") as caught:
        probe_driver(tree, probe.device_id).read_now()
    assert isinstance(caught.value, ValueError) and caught.value.sensor == "coldstore"


def test_the_85_degree_power_on_value_is_never_reported(tree):
    probe = tree.add_ds18b20(celsius=4.5)
    probe.power_on_reset()
    with pytest.raises(SensorDataInvalid, match="power-on"):
        probe_driver(tree, probe.device_id).read_now()
    with pytest.raises(SensorDataInvalid, match="power-on"):
        parse_w1_slave(POWER_ON)


def test_a_shorted_data_line_reads_zeros_that_pass_the_crc_and_is_rejected(tree):
    probe = tree.add_ds18b20()
    probe.shorted()
    assert "crc=00 YES" in probe.w1_slave.read_text()
    with pytest.raises(SensorDataInvalid, match="shorted"):
        probe_driver(tree, probe.device_id).read_now()


def test_every_partial_w1_slave_file_is_rejected(tree):
    probe = tree.add_ds18b20(celsius=18.0)
    sensor = probe_driver(tree, probe.device_id)
    full = len(probe.w1_slave.read_text())
    for length in range(full):
        probe.truncate(length)
        with pytest.raises(SensorDataInvalid):
            sensor.read_now()
    probe.truncate(full)
    assert sensor.read_now().value == 18.0


def test_an_unplugged_probe_is_missing_and_comes_back_when_plugged(tree):
    probe = tree.add_ds18b20(celsius=3.0)
    sensor = probe_driver(tree, probe.device_id)
    probe.unplug()
    assert discover(tree.devices_dir) == []
    with pytest.raises(SensorMissing, match=probe.device_id) as caught:
        asyncio.run(sensor.read())
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value.__cause__, FileNotFoundError)
    probe.plug()
    assert sensor.read_now().value == 3.0


def test_discover_lists_the_ds18b20s_on_the_bus(tree, tmp_path):
    first, second = tree.add_ds18b20(), tree.add_ds18b20()
    (tree.devices_dir / "00-400000000000").mkdir()  # another family on the same bus
    assert discover(tree.devices_dir) == sorted([first.device_id, second.device_id])
    assert (tree.master_dir / "w1_master_slaves").read_text().split() == [first.device_id, second.device_id]
    assert discover(tmp_path / "no-w1-bus-here") == []


def test_non_ascii_bytes_in_w1_slave_are_a_typed_fault(tree):
    probe = tree.add_ds18b20()
    probe.w1_slave.write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(SensorDataInvalid, match="non-ASCII"):
        probe_driver(tree, probe.device_id).read_now()


@pytest.mark.parametrize("device_id", ["28-0316a2791AFF", "10-0316a2791aff", "28-0316a279", "", "../etc"])
def test_config_refuses_a_device_id_that_is_not_a_ds18b20(device_id):
    with pytest.raises(ValueError, match="DS18B20 id"):
        DS18B20Config("coldstore", device_id)


w1_alphabet = st.sampled_from(list(string.hexdigits.lower()[:16] + " :=crtYESNO-\n0123456789"))


@settings(max_examples=1500)
@given(
    text=st.one_of(
        st.text(max_size=120),
        st.text(alphabet=w1_alphabet, max_size=120),
        st.builds(lambda cut: GOOD[:cut], st.integers(0, len(GOOD))),
        st.builds(lambda i, c: GOOD[:i] + c + GOOD[i + 1 :], st.integers(0, len(GOOD) - 1), st.characters()),
    )
)
def test_any_w1_slave_text_gives_a_plausible_temperature_or_a_typed_fault(text):
    try:
        celsius = parse_w1_slave(text)
    except SensorDataInvalid:
        return
    assert -55.0 <= celsius <= 125.0 and celsius != 85.0


@settings(max_examples=1000)
@given(
    pad=st.binary(min_size=9, max_size=9),
    fix_crc=st.booleans(),
    verdict=st.booleans(),
    milli=st.one_of(st.integers(-2_000_000, 2_000_000), st.just(85_000), st.just(0)),
)
def test_well_formed_files_are_accepted_only_when_every_check_passes(pad, fix_crc, verdict, milli):
    if fix_crc:
        pad = pad[:8] + bytes([crc8_maxim(pad[:8])])
    text = w1_slave_text(pad, verdict, milli)
    crc_good = crc8_maxim(pad[:8]) == pad[8]
    acceptable = verdict and crc_good and any(pad) and milli != 85_000 and -55_000 <= milli <= 125_000
    if acceptable:
        assert parse_w1_slave(text) == milli / 1000
    else:
        with pytest.raises(SensorDataInvalid):
            parse_w1_slave(text)


@settings(max_examples=300)
@given(content=st.binary(max_size=200))
def test_any_bytes_in_the_file_give_a_sample_or_a_sensor_fault(tmp_path_factory, content):
    tree = OneWireTree(tmp_path_factory.mktemp("w1"))
    probe = tree.add_ds18b20()
    probe.w1_slave.write_bytes(content)
    try:
        sample = probe_driver(tree, probe.device_id).read_now()
    except SensorFault as fault:
        assert isinstance(fault, DriverError)
        return
    assert sample.unit == "Cel"


def test_simulated_scratchpad_round_trips_through_the_parser():
    for raw in (-880, -1, 0, 1, 370, 2000):
        pad = scratchpad(raw)
        assert crc8_maxim(pad[:8]) == pad[8]
        milli = int(raw * 1000 / 16)
        # 0 C is a fine reading: only an all-zero scratchpad is rejected, and this one has TH/TL set.
        assert parse_w1_slave(w1_slave_text(pad, True, milli)) == milli / 1000
