"""drivers.gpio — the gateway's digital I/O through gpiozero: contacts, PIR motion, run-hours, modem power.

* `ContactSensor`: a tamper switch or a door contact on a gpiozero `Button`,
  debounced in software; reports open/closed on poll and on every change.
* `MotionDetector`: a PIR on a gpiozero `MotionSensor`; reports motion and a
  cumulative count of motion events.
* `RunHoursMeter`: an input that is high while a machine runs; accumulates
  run time with an injectable clock and reports starts and stops.
* `ModemPowerLine`: the modem's supply relay / enable line on a gpiozero
  `OutputDevice`, with `power_cycle()` for the health monitor's last resort.

Why debounce here and not with gpiozero's `bounce_time`: gpiozero leaves
debouncing to the pin driver, whose behaviour differs per factory (MockPin
ignores it entirely), and a lock-out debounce keeps the first edge of a burst,
so a contact that bounces open-closed-open can latch the wrong state. The
`Debouncer` below accepts a level only once it has held for `settle_s`, which
is what a tamper input needs, and it is pure so tests drive it with a fake clock.
"""
from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from gpiozero import Button, DigitalInputDevice, GPIOZeroError, MotionSensor, OutputDevice

from drivers.exc import GpioConfigError
from drivers.sensor import Listener, Listeners, Sample

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Level = Literal["high", "low"]
_Device = TypeVar("_Device")


def _check_common(name: str, pin: int | str, interval_s: float) -> None:
    if not isinstance(name, str) or not name:
        raise GpioConfigError(f"GPIO input name {name!r} must be a non-empty string")
    if isinstance(pin, bool) or not isinstance(pin, (int, str)) or pin == "":
        raise GpioConfigError(f"{name}: pin {pin!r} must be a BCM number or a gpiozero pin name such as 'GPIO17'")
    if not interval_s > 0:
        raise GpioConfigError(f"{name}: interval_s {interval_s!r} must be > 0")


def _check_level(name: str, field: str, level: str) -> None:
    if level not in ("high", "low"):
        raise GpioConfigError(f"{name}: {field} must be 'high' or 'low', got {level!r}")


@dataclass(frozen=True, slots=True)
class ContactConfig:
    """A switch contact: `open_when` is the pin level that means "open" (door open, lid lifted).

    With the usual wiring — switch to ground, internal pull-up — a closed contact
    pulls the pin low, so an open contact reads high: the defaults.
    """

    name: str
    pin: int | str
    open_when: Level = "high"
    pull_up: bool = True
    settle_s: float = 0.05
    interval_s: float = 60.0

    def __post_init__(self) -> None:
        _check_common(self.name, self.pin, self.interval_s)
        _check_level(self.name, "open_when", self.open_when)
        if not 0 <= self.settle_s <= 10:
            raise GpioConfigError(f"{self.name}: settle_s {self.settle_s!r} must be between 0 and 10 seconds")


@dataclass(frozen=True, slots=True)
class MotionConfig:
    """A PIR motion sensor (its output is high while it sees motion)."""

    name: str
    pin: int | str
    interval_s: float = 60.0
    sample_rate_hz: float = 10.0
    queue_len: int = 1
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _check_common(self.name, self.pin, self.interval_s)
        if not 0 < self.sample_rate_hz <= 1000:
            raise GpioConfigError(f"{self.name}: sample_rate_hz {self.sample_rate_hz!r} must be in (0, 1000]")
        if not isinstance(self.queue_len, int) or self.queue_len < 1:
            raise GpioConfigError(f"{self.name}: queue_len {self.queue_len!r} must be an integer >= 1")
        if not 0 < self.threshold < 1:
            raise GpioConfigError(f"{self.name}: threshold {self.threshold!r} must be in (0, 1)")


@dataclass(frozen=True, slots=True)
class RunHoursConfig:
    """A machine-running input: `running_when` is the pin level while the machine runs.

    `pull_up` None leaves the pin floating, for a signal driven both ways (an
    opto-coupler's push-pull output). `initial_seconds` carries the total over from the agent's saved state, so
    run-hours survive a gateway restart.
    """

    name: str
    pin: int | str
    running_when: Level = "high"
    pull_up: bool | None = False
    settle_s: float = 0.5
    interval_s: float = 300.0
    initial_seconds: float = 0.0

    def __post_init__(self) -> None:
        _check_common(self.name, self.pin, self.interval_s)
        _check_level(self.name, "running_when", self.running_when)
        if not 0 <= self.settle_s <= 60:
            raise GpioConfigError(f"{self.name}: settle_s {self.settle_s!r} must be between 0 and 60 seconds")
        if not self.initial_seconds >= 0:
            raise GpioConfigError(f"{self.name}: initial_seconds {self.initial_seconds!r} must be >= 0")


@dataclass(frozen=True, slots=True)
class PowerLineConfig:
    """The modem's power line: a relay or load switch that powers the modem while asserted."""

    pin: int | str
    active_high: bool = True
    off_s: float = 5.0
    name: str = "modem-power"

    def __post_init__(self) -> None:
        _check_common(self.name, self.pin, 1.0)
        # A modem needs its rails fully discharged before it restarts cleanly.
        if not 0.1 <= self.off_s <= 120:
            raise GpioConfigError(f"{self.name}: off_s {self.off_s!r} must be between 0.1 and 120 seconds")


class Debouncer:
    """A level is accepted only after the raw input has held it for `settle_s` seconds.

    Pure: the caller says what the raw level is and when. `settle(now)` returns
    `(level, since)` when the stable level changes, `since` being the time of
    the raw edge that started the new level (so run time is not skewed by the
    settle delay).
    """

    def __init__(self, settle_s: float, level: bool, now: float) -> None:
        self.settle_s = settle_s
        self._stable = level
        self._raw = level
        self._raw_since = now
        self._deadline = now

    @property
    def stable(self) -> bool:
        return self._stable

    def observe(self, level: bool, at: float) -> None:
        if level != self._raw:
            self._raw = level
            self._raw_since = at
            self._deadline = at + self.settle_s

    def remaining(self, now: float) -> float:
        """Seconds until the pending level counts as stable; 0 when nothing is pending."""
        if self._raw == self._stable:
            return 0.0
        return max(0.0, self._deadline - now)

    def settle(self, now: float) -> tuple[bool, float] | None:
        if self._raw != self._stable and now >= self._deadline:
            self._stable = self._raw
            return self._stable, self._raw_since
        return None


def _build(name: str, pin: int | str, factory: Callable[[], _Device]) -> _Device:
    try:
        return factory()
    except GPIOZeroError as exc:
        raise GpioConfigError(
            f"{name}: cannot use pin {pin!r} ({type(exc).__name__}: {exc}); check the pin in the config "
            "and that no other device holds it"
        ) from exc


class _DebouncedInput(ABC):
    """Common part of inputs whose level is debounced and whose changes are pushed to listeners."""

    def __init__(
        self,
        name: str,
        device: DigitalInputDevice,
        high_means: bool,
        settle_s: float,
        clock: Clock,
        wall_clock: Clock,
        sleep: Sleep,
    ) -> None:
        self.name = name
        self._device = device
        self._high_means = high_means
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._listeners = Listeners(name)
        self._debouncer = Debouncer(settle_s, self._level(), clock())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        device.when_activated = self._on_edge
        device.when_deactivated = self._on_edge

    def _level(self) -> bool:
        """The input's meaning (open / running) from the electrical level of its pin."""
        pin = self._device.pin
        if pin is None:
            raise GpioConfigError(f"{self.name} is closed; create it again to read it")
        return bool(pin.state) == self._high_means

    def _on_edge(self) -> None:  # gpiozero calls this from its own thread on real hardware
        with self._lock:
            self._debouncer.observe(self._level(), self._clock())
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed under us; the next read() still confirms the change
                pass

    def _wall_time(self, monotonic_at: float) -> float:
        return self._wall_clock() - (self._clock() - monotonic_at)

    def _confirm(self) -> None:
        samples: list[Sample] = []
        with self._lock:
            change = self._debouncer.settle(self._clock())
            if change is not None:
                samples = self._changed(*change)
        for sample in samples:  # outside the lock: a listener may read this input
            self._listeners.notify(sample)

    @abstractmethod
    def _changed(self, level: bool, since: float) -> list[Sample]:
        """The samples a confirmed change to `level` (settled since monotonic `since`) produces."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)

    async def watch(self) -> None:
        """Run until cancelled: confirm each change once it has settled and notify the listeners."""
        wake = asyncio.Event()
        with self._lock:
            self._loop, self._wake = asyncio.get_running_loop(), wake
        wake.set()  # an edge may have come before the watch started
        try:
            while True:
                await wake.wait()
                wake.clear()
                while True:
                    with self._lock:
                        remaining = self._debouncer.remaining(self._clock())
                    if remaining <= 0:
                        break
                    # At least a millisecond, so float rounding can never spin this loop.
                    await self._sleep(max(remaining, 0.001))
                self._confirm()
        finally:
            with self._lock:
                self._loop, self._wake = None, None

    def close(self) -> None:
        self._device.close()


class ContactSensor(_DebouncedInput):
    """A tamper switch or door contact; samples are `name` = True while the contact is open."""

    def __init__(
        self,
        config: ContactConfig,
        *,
        pin_factory: object | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.interval = config.interval_s
        button = _build(
            config.name,
            config.pin,
            lambda: Button(config.pin, pull_up=config.pull_up, bounce_time=None, pin_factory=pin_factory),
        )
        super().__init__(
            config.name, button, config.open_when == "high", config.settle_s, clock, wall_clock, sleep
        )

    @property
    def is_open(self) -> bool:
        """The debounced state: True while the contact is open."""
        self._confirm()
        return self._debouncer.stable

    def _changed(self, level: bool, since: float) -> list[Sample]:
        return [Sample(self.name, level, None, self._wall_time(since))]

    async def read(self) -> list[Sample]:
        return [Sample(self.name, self.is_open, None, self._wall_clock())]


class RunHoursMeter(_DebouncedInput):
    """Accumulated run time of a machine: `name` in seconds, and `name.running` on every start and stop."""

    def __init__(
        self,
        config: RunHoursConfig,
        *,
        pin_factory: object | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.interval = config.interval_s
        device = _build(
            config.name,
            config.pin,
            lambda: DigitalInputDevice(
                config.pin,
                pull_up=config.pull_up,  # pyright: ignore[reportArgumentType]  # gpiozero takes None: floating
                # gpiozero needs the active level of a floating input; ours is read from the pin itself.
                active_state=None if config.pull_up is not None else config.running_when == "high",
                bounce_time=None,
                pin_factory=pin_factory,
            ),
        )
        self._accumulated = float(config.initial_seconds)
        self._running_since: float | None = None
        super().__init__(
            config.name, device, config.running_when == "high", config.settle_s, clock, wall_clock, sleep
        )
        if self._debouncer.stable:  # already running when the gateway started: count from now
            self._running_since = clock()

    @property
    def running(self) -> bool:
        self._confirm()
        return self._debouncer.stable

    def run_seconds(self) -> float:
        """Total run time so far, including the current run."""
        self._confirm()
        with self._lock:
            total = self._accumulated
            if self._running_since is not None:
                total += max(0.0, self._clock() - self._running_since)
        return total

    def _changed(self, level: bool, since: float) -> list[Sample]:
        if level:
            self._running_since = since
        elif self._running_since is not None:
            self._accumulated += max(0.0, since - self._running_since)
            self._running_since = None
        return [Sample(f"{self.name}.running", level, None, self._wall_time(since))]

    async def read(self) -> list[Sample]:
        now = self._wall_clock()
        return [
            Sample(self.name, self.run_seconds(), "s", now),
            Sample(f"{self.name}.running", self.running, None, now),
        ]


class MotionDetector:
    """A PIR: `name` is True while motion is seen, `name.events` counts motion starts since the agent began."""

    def __init__(
        self,
        config: MotionConfig,
        *,
        pin_factory: object | None = None,
        wall_clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.name = config.name
        self.interval = config.interval_s
        self._wall_clock = wall_clock
        self._listeners = Listeners(config.name)
        self._lock = threading.Lock()
        self._events = 0
        # gpiozero samples the PIR in its own thread and averages `queue_len`
        # readings; a digital PIR output needs no more than one.
        self._sensor: MotionSensor = _build(
            config.name,
            config.pin,
            lambda: MotionSensor(
                config.pin,
                queue_len=config.queue_len,
                sample_rate=config.sample_rate_hz,  # pyright: ignore[reportArgumentType]  # any positive number
                threshold=config.threshold,
                pull_up=False,
                pin_factory=pin_factory,
            ),
        )
        self._sensor.when_motion = self._on_motion
        self._sensor.when_no_motion = self._on_no_motion

    def _on_motion(self) -> None:
        with self._lock:
            self._events += 1
        self._listeners.notify(Sample(self.name, True, None, self._wall_clock()))

    def _on_no_motion(self) -> None:
        self._listeners.notify(Sample(self.name, False, None, self._wall_clock()))

    @property
    def device(self) -> MotionSensor:
        """The gpiozero device, for diagnostics (`wait_for_no_motion`, `value`)."""
        return self._sensor

    @property
    def events(self) -> int:
        with self._lock:
            return self._events

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)

    async def read(self) -> list[Sample]:
        now = self._wall_clock()
        return [
            Sample(self.name, bool(self._sensor.is_active), None, now),
            Sample(f"{self.name}.events", self.events, "count", now),
        ]

    def close(self) -> None:
        self._sensor.close()


class ModemPowerLine:
    """The modem's power: on at start; `power_cycle()` cuts it for `off_s` and restores it."""

    def __init__(self, config: PowerLineConfig, *, pin_factory: object | None = None, sleep: Sleep = asyncio.sleep) -> None:
        self.config = config
        self._sleep = sleep
        self._cycling = asyncio.Lock()
        self.cycles = 0
        self._device: OutputDevice = _build(
            config.name,
            config.pin,
            lambda: OutputDevice(
                config.pin, active_high=config.active_high, initial_value=True, pin_factory=pin_factory
            ),
        )

    @property
    def is_on(self) -> bool:
        return bool(self._device.value)

    def on(self) -> None:
        self._device.on()

    def off(self) -> None:
        self._device.off()

    async def power_cycle(self) -> None:
        """Cut the modem's power for `off_s`, then restore it; concurrent calls run one after the other."""
        async with self._cycling:
            self._device.off()
            try:
                await self._sleep(self.config.off_s)
            finally:
                # Even if the caller is cancelled mid-cycle the modem must not stay unpowered.
                self._device.on()
            self.cycles += 1

    def close(self) -> None:
        self._device.close()
