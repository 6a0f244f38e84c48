"""The node's sampling phase: temperature, tamper switch, battery, tilt and motion, as SenML records for its envelope.

Loaded for the phase and forgotten after it (runtime.release), like the
sensor drivers (sensors, onewire): their code never shares the heap with the
signer or the modem. A sensor that fails its datasheet check costs its record
and a log line, never the cycle.
"""

import json
import os

import machine

from errors import SensorError
from runtime import unix_time

HEARTBEAT_S = "device.heartbeat_s"  # telemetry.manifest: the longest the node stays silent, its wake interval


def _pin(node, number, mode, pull=None):
    if pull is None:
        return machine.Pin(number, mode)
    return machine.Pin(number, mode, pull)


def sample(node, powered_on):
    """The readings of this wake, and whether they make an alarm envelope.

    After a start (node.started), the manifest too: device.heartbeat_s, the wake interval, so the lender knows
    how long this node may stay silent (the first envelope of every boot declares it; ~28 bytes, once).
    """
    import sensors

    config = node.config
    now = unix_time()
    records = []
    alarm = False
    if config.onewire_pin is not None:
        try:
            import onewire

            bus = onewire.OneWire(_pin(node, config.onewire_pin, machine.Pin.IN))
            celsius = sensors.DS18B20(bus, config.ds18b20_conversion_ms, feed=node.feed).celsius()
            records.append({"name": "temp", "value": celsius, "unit": "Cel"})
        except (SensorError, ImportError, OSError) as error:
            node._note("temperature", error)
    if config.tamper_pin is not None:
        switch = sensors.TamperSwitch(_pin(node, config.tamper_pin, machine.Pin.IN, machine.Pin.PULL_UP),
                                      config.tamper_open_level)
        opened = switch.is_open() or node.wake_reason == getattr(machine, "PIN_WAKE", -1) or _take_tamper_flag(node)
        if opened and _permitted(node, now, "tamper"):
            records.append({"name": "event.tamper", "boolean": True})  # inside a lender's permit: an event
        elif opened:
            records.append({"name": "alarm.tamper", "boolean": True})
            alarm = True
        else:
            records.append({"name": "tamper", "boolean": False})
        _watch_tamper(node, switch)
    if config.battery_adc_pin is not None:
        try:
            pin = _pin(node, config.battery_adc_pin, machine.Pin.IN)
            attenuation = getattr(machine.ADC, "ATTN_11DB", None)  # ESP32: the full 0..3.3 V range
            adc = machine.ADC(pin) if attenuation is None else machine.ADC(pin, atten=attenuation)
            records.append({"name": "batt", "value": sensors.Battery(adc, config.battery_divider).volts(), "unit": "V"})
        except (SensorError, OSError) as error:
            node._note("battery", error)
    if config.i2c is not None:
        try:
            alarm = _motion(node, records, powered_on) or alarm
        except (SensorError, OSError, ValueError) as error:
            node._note("accelerometer", error)
    if node.started:
        records.append({"name": HEARTBEAT_S, "value": config.interval_s, "unit": "s"})
    if now is not None:
        for record in records:
            record["time"] = now
    return records, alarm


def _motion(node, records, powered_on):
    import sensors

    config = node.config
    bus = config.i2c
    i2c = machine.I2C(bus.get("id", 0), scl=_pin(node, bus["scl"], machine.Pin.OUT),
                      sda=_pin(node, bus["sda"], machine.Pin.OUT))
    accelerometer = sensors.LIS3DH(i2c, config.lis3dh_address)
    if powered_on:
        accelerometer.setup(config.motion_mg)
    alarm = False
    now = unix_time()
    if accelerometer.moved():
        permitted = _permitted(node, now, "motion")
        records.append({"name": "event.motion" if permitted else "alarm.motion", "boolean": True})
        alarm = alarm or not permitted
    vector = accelerometer.acceleration_mg()
    reference = _orientation(node, vector)
    tilt = sensors.tilt_degrees(vector, reference)
    if tilt >= config.tilt_alarm_deg:
        permitted = _permitted(node, now, "tilt")
        records.append({"name": "event.tilt" if permitted else "alarm.tilt", "value": sensors.to_half(tilt),
                        "unit": "deg"})
        alarm = alarm or not permitted
    return alarm


def _permitted(node, now, sensor):
    """Whether a lender's signed permit in force (node.permits, from cmdstate) covers an opening of `sensor` now."""
    if not node.permits or now is None:
        return False
    for start, until, inputs in node.permits:
        if start <= now < until and (not inputs or sensor in inputs):
            return True
    return False


def _orientation(node, vector):
    """The installed orientation: the first gravity vector this node measured, kept in flash."""
    name = node._file("orientation.json")
    try:
        with open(name) as file:
            reference = json.loads(file.read())
        if isinstance(reference, list) and len(reference) == 3:
            return reference
    except (OSError, ValueError):
        pass
    with open(name, "w") as file:
        file.write(json.dumps(list(vector)))
    return list(vector)


def _watch_tamper(node, switch):
    """Latch a tamper edge that happens while the node is awake, for the next wake to report."""
    trigger = machine.Pin.IRQ_RISING if switch.open_level else machine.Pin.IRQ_FALLING
    switch.pin.irq(handler=node.latch_tamper, trigger=trigger)
    node.tamper_pin = switch.pin
    node.tamper_open_level = switch.open_level


def _take_tamper_flag(node):
    try:
        os.remove(node._file("tamper.flag"))
        return True
    except OSError:
        return False
