"""The gateway's digital inputs and the modem power line, on gpiozero's MockFactory with a fake clock."""
from __future__ import annotations

import asyncio
import threading

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.exc import DriverError, GpioConfigError
from drivers.gpio import (
    ContactConfig,
    ContactSensor,
    Debouncer,
    ModemPowerLine,
    MotionConfig,
    MotionDetector,
    PowerLineConfig,
    RunHoursConfig,
    RunHoursMeter,
)
from drivers.sensor import EventSource, Sample, Sensor, Watched, queue_listener

EPOCH = 1_700_000_000.0


class FakeClock:
    """Monotonic time that moves only when the test (or a sleeping driver) says so."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def factory():
    factory = MockFactory()
    previous, Device.pin_factory = Device.pin_factory, factory
    yield factory
    factory.reset()
    Device.pin_factory = previous


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def door(clock: FakeClock, **overrides) -> ContactSensor:
    config = ContactConfig("door", 17, **({"settle_s": 0.05} | overrides))
    return ContactSensor(config, clock=clock, wall_clock=clock.wall, sleep=clock.sleep)


def bounce(pin, clock: FakeClock, levels: str, gap: float = 0.002) -> None:
    """Drive `pin` through levels ("H"/"L") `gap` seconds apart, like a bouncing contact."""
    for level in levels:
        pin.drive_high() if level == "H" else pin.drive_low()
        clock.advance(gap)


def test_door_contact_is_a_sensor_and_an_event_source(factory, clock):
    contact = door(clock)
    assert isinstance(contact, Sensor) and isinstance(contact, EventSource) and isinstance(contact, Watched)
    assert contact.interval == 60.0


def test_door_contact_debounces_bounce(factory, clock):
    pin = factory.pin(17)
    contact = door(clock)
    changes: list[Sample] = []
    contact.subscribe(changes.append)
    assert contact.is_open  # pulled up, nothing closing it yet

    pin.drive_low()  # the door shuts
    clock.advance(0.06)
    assert not contact.is_open
    assert [c.value for c in changes] == [False]

    # A knock on the door: the reed switch chatters but ends closed.
    bounce(pin, clock, "HLHLHL")
    clock.advance(0.06)
    assert not contact.is_open
    assert len(changes) == 1

    # The door opens with a few bounces, and stays open.
    bounce(pin, clock, "HLH")
    opened_at = clock.now - 0.002
    assert contact.is_open is False  # not settled yet: 2 ms of a 50 ms settle
    clock.advance(0.05)
    assert contact.is_open
    assert [c.value for c in changes] == [False, True]
    assert changes[-1].time == pytest.approx(EPOCH + opened_at)  # when it opened, not when we noticed


def test_door_contact_reads_open_and_closed_on_poll(factory, clock):
    pin = factory.pin(17)
    contact = door(clock)
    pin.drive_low()
    clock.advance(1)
    [sample] = asyncio.run(contact.read())
    assert sample == Sample("door", False, None, EPOCH + clock.now)
    pin.drive_high()
    clock.advance(1)
    [sample] = asyncio.run(contact.read())
    assert sample.value is True


def test_contact_wired_open_when_low_reports_open_on_low_level(factory, clock):
    pin = factory.pin(17)
    contact = door(clock, open_when="low")
    assert not contact.is_open  # pulled high = closed in this wiring
    pin.drive_low()
    clock.advance(0.1)
    assert contact.is_open


def test_tamper_switch_pushes_one_sample_per_opening_to_the_agent_queue(factory, clock):
    pin = factory.pin(22)
    tamper = ContactSensor(
        ContactConfig("tamper", 22, settle_s=0.05), clock=clock, wall_clock=clock.wall, sleep=clock.sleep
    )

    async def scenario() -> list[Sample]:
        queue: asyncio.Queue[Sample] = asyncio.Queue()
        tamper.subscribe(queue_listener(queue))
        pin.drive_low()  # lid closed before the watch starts
        watch = asyncio.create_task(tamper.watch())
        received = [await asyncio.wait_for(queue.get(), 5)]
        bounce(pin, clock, "HLHLH")  # lid pried open, contact chatters, stays open
        received.append(await asyncio.wait_for(queue.get(), 5))
        bounce(pin, clock, "LH")  # a glitch shorter than the settle time: no sample
        for _ in range(20):
            await asyncio.sleep(0)
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
        assert queue.empty()
        return received

    received = asyncio.run(scenario())
    assert [s.value for s in received] == [False, True]
    assert all(s.name == "tamper" for s in received)
    assert all(0 < s <= 0.05 for s in clock.slept)  # it waited only for the settle time


def test_a_listener_that_raises_does_not_silence_the_others(factory, clock):
    pin = factory.pin(17)
    contact = door(clock)
    seen: list[Sample] = []

    def broken(sample: Sample) -> None:
        raise RuntimeError("listener bug")

    contact.subscribe(broken)
    unsubscribe = contact.subscribe(seen.append)
    pin.drive_low()
    clock.advance(0.1)
    assert not contact.is_open
    assert len(seen) == 1
    unsubscribe()
    pin.drive_high()
    clock.advance(0.1)
    assert contact.is_open
    assert len(seen) == 1


def test_run_hours_accumulate_with_injected_clock(factory, clock):
    pin = factory.pin(5)
    meter = RunHoursMeter(
        RunHoursConfig("press", 5, settle_s=0.5, initial_seconds=7200.0),
        clock=clock,
        wall_clock=clock.wall,
        sleep=clock.sleep,
    )
    assert meter.run_seconds() == 7200.0 and not meter.running

    pin.drive_high()  # machine starts
    clock.advance(3600)
    assert meter.running
    assert meter.run_seconds() == pytest.approx(7200 + 3600)
    pin.drive_low()  # stops
    clock.advance(100)
    assert meter.run_seconds() == pytest.approx(7200 + 3600)
    pin.drive_high()
    clock.advance(1800)
    samples = asyncio.run(meter.read())
    assert samples[0].name == "press" and samples[0].unit == "s"
    assert samples[0].value == pytest.approx(7200 + 3600 + 1800)
    assert samples[1] == Sample("press.running", True, None, EPOCH + clock.now)


def test_run_hours_ignore_a_glitch_shorter_than_the_settle_time(factory, clock):
    pin = factory.pin(5)
    meter = RunHoursMeter(RunHoursConfig("pump", 5, settle_s=0.5), clock=clock, wall_clock=clock.wall)
    starts: list[Sample] = []
    meter.subscribe(starts.append)
    pin.drive_high()
    clock.advance(0.2)  # contactor chatter
    pin.drive_low()
    clock.advance(10)
    assert meter.run_seconds() == 0.0
    assert starts == []


def test_run_hours_push_start_and_stop_while_watched(factory, clock):
    pin = factory.pin(5)
    meter = RunHoursMeter(
        RunHoursConfig("pump", 5, settle_s=0.5), clock=clock, wall_clock=clock.wall, sleep=clock.sleep
    )

    async def scenario() -> list[Sample]:
        queue: asyncio.Queue[Sample] = asyncio.Queue()
        meter.subscribe(queue_listener(queue))
        watch = asyncio.create_task(meter.watch())
        await asyncio.sleep(0)
        pin.drive_high()
        edges.append(clock.now)
        started = await asyncio.wait_for(queue.get(), 5)
        clock.advance(60)
        pin.drive_low()
        edges.append(clock.now)
        stopped = await asyncio.wait_for(queue.get(), 5)
        watch.cancel()
        return [started, stopped]

    edges: list[float] = []
    started, stopped = asyncio.run(scenario())
    assert (started.name, started.value, stopped.value) == ("pump.running", True, False)
    assert [started.time, stopped.time] == [pytest.approx(EPOCH + edge) for edge in edges]
    assert meter.run_seconds() == pytest.approx(edges[1] - edges[0])


def test_machine_already_running_at_boot_counts_from_boot(factory, clock):
    pin = factory.pin(6)
    pin.drive_high()  # an opto-coupler output, driven both ways, already high
    meter = RunHoursMeter(RunHoursConfig("mill", 6, pull_up=None), clock=clock, wall_clock=clock.wall)
    assert meter.running
    clock.advance(30)
    assert meter.run_seconds() == pytest.approx(30)


def test_pir_motion_notifies_the_agent_and_counts_events(factory):
    pin = factory.pin(27)
    detector = MotionDetector(MotionConfig("pir", 27, sample_rate_hz=200), wall_clock=lambda: EPOCH)
    motion, still = threading.Event(), threading.Event()
    seen: list[Sample] = []

    def listen(sample: Sample) -> None:
        seen.append(sample)
        (motion if sample.value else still).set()

    detector.subscribe(listen)
    try:
        # gpiozero's first sample only sets the initial state; motion is an edge after it.
        assert detector.device.wait_for_no_motion(5)
        pin.drive_high()
        # gpiozero samples the PIR in its own thread: wait for it, bounded.
        assert motion.wait(5), "gpiozero never reported the motion"
        pin.drive_low()
        assert still.wait(5), "gpiozero never reported the end of motion"
        pin.drive_high()
        motion.clear()
        assert motion.wait(5)
        assert detector.events == 2
        current, count = asyncio.run(detector.read())
        assert current == Sample("pir", True, None, EPOCH)
        assert count == Sample("pir.events", 2, "count", EPOCH)
        assert [s.value for s in seen] == [True, False, True]
    finally:
        detector.close()


def test_modem_power_cycle_drives_the_line_off_then_on(factory, clock):
    pin = factory.pin(26)
    line = ModemPowerLine(PowerLineConfig(26, off_s=5.0), sleep=clock.sleep)
    assert line.is_on and pin.state
    pin.clear_states()
    asyncio.run(line.power_cycle())
    assert [state.state for state in pin.states] == [True, False, True]
    assert clock.slept == [5.0]
    assert line.is_on and line.cycles == 1


def test_active_low_power_line_holds_the_pin_low_while_powered(factory, clock):
    pin = factory.pin(26)
    line = ModemPowerLine(PowerLineConfig(26, active_high=False, off_s=1.0), sleep=clock.sleep)
    assert line.is_on and not pin.state
    line.off()
    assert pin.state and not line.is_on
    line.on()
    assert not pin.state


def test_power_cycle_restores_power_even_when_cancelled(factory):
    pin = factory.pin(26)
    never = asyncio.Event()

    async def stuck_sleep(seconds: float) -> None:
        await never.wait()

    line = ModemPowerLine(PowerLineConfig(26), sleep=stuck_sleep)

    async def scenario() -> None:
        cycle = asyncio.create_task(line.power_cycle())
        await asyncio.sleep(0)
        assert not pin.state  # power cut
        cycle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cycle

    asyncio.run(scenario())
    assert pin.state and line.is_on and line.cycles == 0


def test_two_devices_on_one_pin_is_a_config_error(factory, clock):
    door(clock)
    with pytest.raises(GpioConfigError) as caught:
        ContactSensor(ContactConfig("tamper", 17))
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, DriverError)
    assert "tamper" in str(caught.value) and "17" in str(caught.value)
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    "build",
    [
        lambda: ContactConfig("", 17),
        lambda: ContactConfig("door", True),
        lambda: ContactConfig("door", 17, open_when="sideways"),
        lambda: ContactConfig("door", 17, settle_s=-1),
        lambda: ContactConfig("door", 17, interval_s=0),
        lambda: MotionConfig("pir", 27, queue_len=0),
        lambda: MotionConfig("pir", 27, threshold=1.5),
        lambda: RunHoursConfig("press", 5, initial_seconds=-1),
        lambda: RunHoursConfig("press", 5, running_when="on"),
        lambda: PowerLineConfig(26, off_s=0),
    ],
)
def test_invalid_gpio_configs_are_refused_when_built(build):
    with pytest.raises(GpioConfigError):
        build()


# Times in whole milliseconds keep float sums exact, so the boundary "held for
# exactly settle_s" is tested, not float rounding.
levels = st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=200)), max_size=40)


@settings(max_examples=500)
@given(initial=st.booleans(), events=levels, settle=st.integers(min_value=1, max_value=100))
def test_debouncer_accepts_exactly_the_levels_that_held_for_the_settle_time(initial, events, settle):
    debouncer = Debouncer(settle, initial, 0.0)
    accepted: list[bool] = []
    now = 0.0
    # The reference: merge equal neighbours into segments; a segment of a new
    # level that lasts >= settle becomes the stable level.
    expected, stable = [], initial
    segment_level, segment_start = initial, 0.0
    for level, gap in events:
        now += gap
        changed = debouncer.settle(now)
        if changed:
            accepted.append(changed[0])
        if level != segment_level:
            if segment_level != stable and now - segment_start >= settle:
                stable = segment_level
                expected.append(stable)
            segment_level, segment_start = level, now
        debouncer.observe(level, now)
    now += 1000
    changed = debouncer.settle(now)
    if changed:
        accepted.append(changed[0])
    if segment_level != stable:
        expected.append(segment_level)
    assert accepted == expected
