"""drivers.sensor — the one contract between every sensor driver and the agent.

A sensor is polled through `Sensor.read()`, which yields typed `Sample`s or
raises a `SensorFault`. Inputs that must be reported the moment they change
(a tamper switch, a door contact, a machine starting) are also an
`EventSource`: the agent subscribes a listener and gets a `Sample` per change.

A sensor with background work (confirming debounced edges, reading a serial
port) also has `async def watch()`, which the agent runs as a task until it
cancels it; `Watched` names that.

`read_each` polls many sensors at once so that one failing or silent sensor
becomes a fault in the result and never stops or delays the others.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from drivers.exc import SensorCrashed, SensorFault, SensorSilent

log = logging.getLogger(__name__)

# The resolved-name grammar of SenML (RFC 8428 §4.5.1), so any Sample can
# become a SenML record without renaming; drivers must not import telemetry.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-:./_]*\Z")


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading: what (`name`), how much (`value` in `unit`), when (`time`, UNIX seconds).

    `unit` is a SenML unit ("Cel", "lat", "s", …) or None for booleans, strings
    and dimensionless numbers.
    """

    name: str
    value: float | int | bool | str
    unit: str | None
    time: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"sample name {self.name!r} is invalid: use A-Z a-z 0-9 - : . / _ and start with a letter or digit"
            )
        if not isinstance(self.value, (int, float, bool, str)):
            raise TypeError(f"sample {self.name!r}: value must be a number, bool or str, got {type(self.value).__name__}")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"sample {self.name!r}: value {self.value!r} is not finite")
        if self.unit is not None and not isinstance(self.unit, str):
            raise TypeError(f"sample {self.name!r}: unit must be a str or None")
        if isinstance(self.time, bool) or not isinstance(self.time, (int, float)) or not math.isfinite(self.time):
            raise ValueError(f"sample {self.name!r}: time {self.time!r} must be finite UNIX seconds")


@runtime_checkable
class Sensor(Protocol):
    """What the agent polls: every `interval` seconds it awaits `read()`."""

    name: str
    interval: float

    async def read(self) -> list[Sample]:
        """Return this sensor's current samples, or raise a `SensorFault` subclass."""
        ...


@runtime_checkable
class Watched(Protocol):
    """A sensor whose `watch()` must run (as an asyncio task) for its readings and events to flow."""

    name: str

    async def watch(self) -> None:
        """Run until cancelled."""
        ...


Listener = Callable[[Sample], None]


@runtime_checkable
class EventSource(Protocol):
    """A push-style input: listeners get a `Sample` each time the input changes."""

    name: str

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(sample)` on every change; the returned function unsubscribes."""
        ...


class Listeners:
    """The listeners of one event source; a listener that raises is logged and the others still run.

    `notify` may be called from a gpiozero callback thread: listeners must be
    thread-safe or hand over to the event loop (see `queue_listener`).
    """

    def __init__(self, source: str) -> None:
        self._source = source
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def notify(self, sample: Sample) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(sample)
            except Exception:  # a broken listener must not silence the input for the others
                log.exception("listener %r of %s failed on %s", listener, self._source, sample)


def queue_listener(queue: asyncio.Queue[Sample], loop: asyncio.AbstractEventLoop | None = None) -> Listener:
    """A listener that puts each sample on `queue` from any thread (gpiozero calls back from its own).

    Create it inside the event loop that owns `queue` (or pass that loop).
    """
    owner = loop or asyncio.get_running_loop()

    def put(sample: Sample) -> None:
        owner.call_soon_threadsafe(queue.put_nowait, sample)

    return put


async def read_isolated(sensor: Sensor, timeout: float) -> list[Sample] | SensorFault:
    """Read one sensor; a fault, a hang past `timeout` or an unexpected exception becomes a returned fault."""
    try:
        # asyncio.timeout, not wait_for: in 3.11 wait_for loses a cancellation that
        # arrives as the read completes, and the caller's task then never stops.
        async with asyncio.timeout(timeout):
            return await sensor.read()
    except SensorFault as fault:
        return fault
    except TimeoutError as exc:
        fault = SensorSilent(sensor.name, f"no reading within {timeout:g} s; check its wiring or port")
        fault.__cause__ = exc
        return fault
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # contain a driver bug to its own sensor
        log.exception("sensor %s raised an unexpected error", sensor.name)
        fault = SensorCrashed(sensor.name, f"read raised {type(exc).__name__}: {exc}; this is a driver bug, report it")
        fault.__cause__ = exc
        return fault


async def read_each(sensors: Iterable[Sensor], timeout: float) -> dict[str, list[Sample] | SensorFault]:
    """Read all `sensors` concurrently; each name maps to its samples or to the fault it gave."""
    chosen = list(sensors)
    names = [sensor.name for sensor in chosen]
    if len(set(names)) != len(names):
        raise ValueError(f"sensor names must be unique, got {names}")
    results = await asyncio.gather(*(read_isolated(sensor, timeout) for sensor in chosen))
    return dict(zip(names, results))
