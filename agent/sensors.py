"""Builds the configured sensors: each driver config from agent.toml becomes its driver object."""
from __future__ import annotations

from collections.abc import Iterable

from drivers.gnss import GnssConfig, GnssReceiver
from drivers.gpio import ContactConfig, ContactSensor, MotionConfig, MotionDetector, RunHoursConfig, RunHoursMeter
from drivers.onewire import DS18B20, DS18B20Config

_GPIO_DRIVERS = {ContactConfig: ContactSensor, MotionConfig: MotionDetector, RunHoursConfig: RunHoursMeter}


def build_sensors(configs: Iterable[object], *, pin_factory: object | None = None) -> list[object]:
    """Driver objects for `configs`; GPIO ones use `pin_factory` (gpiozero's default when None)."""
    sensors = []
    for config in configs:
        if isinstance(config, DS18B20Config):
            sensors.append(DS18B20(config))
        elif isinstance(config, GnssConfig):
            sensors.append(GnssReceiver(config))
        else:
            sensors.append(_GPIO_DRIVERS[type(config)](config, pin_factory=pin_factory))
    return sensors
