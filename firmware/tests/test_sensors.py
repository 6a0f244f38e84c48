"""The node's sensor readers over the fake board: datasheet checks turn bad data into SensorError (tests only)."""

import machine
import onewire
import simdevices

import sensors
from check import equal, raises
from errors import SensorError


def _ds18b20(**knobs):
    machine.board.reset()
    device = simdevices.DS18B20()
    for name, value in knobs.items():
        setattr(device, name, value)
    machine.board.attach_onewire(13, device)
    return device, sensors.DS18B20(onewire.OneWire(machine.Pin(13)), conversion_ms=50)


def test_a_ds18b20_reading_is_exact_in_sixteenths_of_a_degree_both_signs():
    for celsius in (21.5, -10.125, 0.0625, 125.0, -55.0):
        device, reader = _ds18b20(celsius=celsius)
        equal(reader.celsius(), celsius)
        equal(device.conversions, 1)


def test_a_ds18b20_that_is_absent_broken_or_never_converted_raises_sensor_error():
    for knobs, words in (({"present": False}, "no DS18B20"), ({"corrupt_crc": True}, "CRC"),
                         ({"power_on_value": True}, "85.0"), ({"stuck_converting": True}, "did not finish")):
        _, reader = _ds18b20(**knobs)
        error = raises(SensorError, reader.celsius)
        assert words in str(error), str(error)


def test_the_lis3dh_is_identified_set_up_read_and_its_motion_latch_rearms():
    machine.board.reset()
    device = simdevices.LIS3DH((12, -250, 981))
    machine.board.attach_i2c(0, 0x18, device)
    accelerometer = sensors.LIS3DH(machine.I2C(0), 0x18)
    accelerometer.setup(motion_mg=320)
    equal(device.registers[0x20], 0x57)
    equal(device.registers[0x32], 20, "320 mg at 16 mg per LSB")
    equal(accelerometer.acceleration_mg(), [12, -250, 981])
    assert not accelerometer.moved()
    device.shake()
    assert accelerometer.moved()
    assert not accelerometer.moved(), "reading INT1_SRC clears the latch"


def test_a_missing_or_foreign_accelerometer_raises_sensor_error():
    machine.board.reset()
    raises(SensorError, sensors.LIS3DH(machine.I2C(0)).setup)
    impostor = simdevices.LIS3DH()
    impostor.registers[0x0F] = 0x44
    machine.board.attach_i2c(0, 0x18, impostor)
    raises(SensorError, sensors.LIS3DH(machine.I2C(0)).setup)


def test_tilt_is_the_angle_to_the_installed_orientation():
    equal(round(sensors.tilt_degrees((0, 500, 866), (0, 0, 1000)), 1), 30.0)
    equal(round(sensors.tilt_degrees((0, 0, -1000), (0, 0, 1000)), 1), 180.0)
    raises(SensorError, sensors.tilt_degrees, (0, 0, 0), (0, 0, 1000))


def test_readings_round_to_the_nearest_half_float_so_cbor_sends_three_bytes():
    equal(sensors.to_half(3.6), 3.599609375)
    equal(sensors.to_half(21.5), 21.5)
    equal(sensors.to_half(3.0009765625), 3.0, "a tie goes to the even neighbour")
    equal(sensors.to_half(-0.0625), -0.0625)
    machine.board.reset()
    machine.board.set_adc(34, 65535 * 1800 // 3300)
    volts = sensors.Battery(machine.ADC(machine.Pin(34)), 2.0).volts()
    assert abs(volts - 3.6) < 0.002 and volts == sensors.to_half(volts), volts
