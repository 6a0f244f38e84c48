"""GNSS position: the fix tracker on a fake clock, and the reader over a real pseudo-terminal."""
from __future__ import annotations

import asyncio
import os

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.exc import GnssNoFix, NmeaError, SensorFault, SensorMissing, SensorSilent
from drivers.gnss import FixTracker, GnssConfig, GnssReceiver, parse_nmea
from drivers.sensor import Sample, Sensor, Watched
from hil.sim.nmea import NmeaFeed, nmea_sentence

EPOCH = 1_700_000_000.0
GGA = "$GPGGA,104549.04,2447.2038,N,12100.4990,E,1,06,01.7,00078.8,M,0016.3,M,,*5C"
RMC = "$GPRMC,081836,A,3751.65,S,14507.36,E,000.0,360.0,130998,011.3,E*62"
NO_FIX = "$GPGGA,,,,,,0,00,99.99,,,,,,*48"


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now


# --- the tracker, pure ------------------------------------------------------------


def test_a_receiver_never_heard_is_silent():
    with pytest.raises(SensorSilent, match="no NMEA"):
        FixTracker(10).current(0.0)


def test_fix_keeps_hdop_satellites_and_altitude_from_gga():
    tracker = FixTracker(10)
    tracker.update(parse_nmea(GGA), 100.0)
    fix = tracker.current(105.0)
    assert (fix.hdop, fix.satellites, fix.altitude_m, fix.quality) == (1.7, 6, 78.8, 1)
    assert fix.received_at == 100.0


def test_fix_older_than_the_allowed_age_is_stale():
    tracker = FixTracker(max_age_s=10)
    tracker.update(parse_nmea(GGA), 100.0)
    assert tracker.current(110.0).position.latitude > 24
    with pytest.raises(SensorSilent, match=r"10\.1 s old \(limit 10 s\)") as caught:
        tracker.current(110.1)
    assert isinstance(caught.value, TimeoutError)


def test_losing_the_fix_is_reported_until_it_returns():
    tracker = FixTracker(10)
    tracker.update(parse_nmea(GGA), 100.0)
    tracker.update(parse_nmea(NO_FIX), 101.0)
    with pytest.raises(GnssNoFix, match="no position fix"):
        tracker.current(101.5)
    tracker.update(parse_nmea(GGA), 102.0)
    assert tracker.current(102.5).received_at == 102.0


def test_newest_report_gives_the_position_and_rmc_gives_speed():
    tracker = FixTracker(10)
    tracker.update(parse_nmea(GGA), 100.0)
    tracker.update(parse_nmea(RMC), 101.0)
    fix = tracker.current(101.0)
    assert fix.position.latitude < 0  # the RMC's southern position is the newer one
    assert fix.hdop == 1.7 and fix.speed_m_per_s == 0.0 and fix.course_deg == 360.0
    # Once the GGA is older than the limit its HDOP is no longer claimed.
    assert tracker.current(110.5).hdop is None


def test_order_not_time_decides_between_fix_and_no_fix_read_together():
    tracker = FixTracker(10)
    tracker.update(parse_nmea(NO_FIX), 100.0)
    tracker.update(parse_nmea(GGA), 100.0)
    assert tracker.current(100.0).hdop == 1.7
    tracker.update(parse_nmea(NO_FIX), 100.0)
    with pytest.raises(GnssNoFix):
        tracker.current(100.0)


def test_rmc_only_receiver_gives_a_fix_without_hdop():
    tracker = FixTracker(10)
    tracker.update(parse_nmea(RMC), 1.0)
    fix = tracker.current(2.0)
    assert fix.hdop is None and fix.utc.year == 1998


# --- the reader over a pseudo-terminal --------------------------------------------


@pytest.fixture
def feed():
    with NmeaFeed(latitude=-1.28333, longitude=36.81667, hdop=0.9) as feed:  # a yard in Nairobi
        yield feed


def receiver_for(path: str, clock: FakeClock, **config) -> GnssReceiver:
    return GnssReceiver(GnssConfig(url=path, max_age_s=10, **config), clock=clock, wall_clock=clock.wall)


async def until(receiver: GnssReceiver, lines: int) -> None:
    await asyncio.wait_for(receiver.wait_for_lines(lines), 5)


async def started(receiver: GnssReceiver) -> asyncio.Task:
    """Run the reader and return once it has the port open (opening flushes what came before)."""
    task = asyncio.create_task(receiver.watch())
    await asyncio.wait_for(receiver.wait_until(lambda counters: counters.opens >= 1), 5)
    return task


def test_gnss_receiver_reports_position_hdop_and_satellites_from_the_port(feed):
    clock = FakeClock()
    receiver = receiver_for(feed.port, clock)
    assert isinstance(receiver, Sensor) and isinstance(receiver, Watched)

    async def scenario() -> list[Sample]:
        task = await started(receiver)
        feed.emit_epoch()
        await until(receiver, 2)
        samples = await receiver.read()
        task.cancel()
        return samples

    samples = {s.name: s for s in asyncio.run(scenario())}
    assert samples["gnss.lat"].value == pytest.approx(-1.28333, abs=1e-6) and samples["gnss.lat"].unit == "lat"
    assert samples["gnss.lon"].value == pytest.approx(36.81667, abs=1e-6) and samples["gnss.lon"].unit == "lon"
    assert samples["gnss.hdop"].value == 0.9
    assert samples["gnss.sats"] == Sample("gnss.sats", 9, "count", EPOCH + 500.0)
    assert samples["gnss.alt"].unit == "m" and samples["gnss.speed"].unit == "m/s"
    assert receiver.counters.sentences == 2 and receiver.counters.checksum_errors == 0


def test_moved_collateral_shows_up_with_new_position_and_hdop(feed, tmp_path):
    clock = FakeClock()
    link = tmp_path / "gnss"
    os.symlink(feed.port, link)  # like a udev symlink to the receiver
    receiver = receiver_for(str(link), clock)

    async def scenario() -> tuple[list[Sample], list[Sample]]:
        task = await started(receiver)
        feed.emit_epoch()
        await until(receiver, 2)
        before = await receiver.read()
        feed.move_to(-1.30000, 36.90000)
        feed.set_hdop(4.2)
        clock.now += 1
        feed.emit_epoch()
        await until(receiver, 4)
        after = await receiver.read()
        task.cancel()
        return before, after

    before, after = asyncio.run(scenario())
    assert before[0].value == pytest.approx(-1.28333, abs=1e-6)
    moved = {s.name: s.value for s in after}
    assert moved["gnss.lat"] == pytest.approx(-1.3, abs=1e-6) and moved["gnss.lon"] == pytest.approx(36.9, abs=1e-6)
    assert moved["gnss.hdop"] == 4.2


def test_fix_loss_bad_checksums_and_garbage_never_stop_the_reader(feed):
    clock = FakeClock()
    receiver = receiver_for(feed.port, clock)

    async def scenario() -> list[type[SensorFault] | str]:
        outcomes: list[type[SensorFault] | str] = []
        task = await started(receiver)
        feed.lose_fix()
        feed.emit_epoch()
        await until(receiver, 2)
        outcomes.append(await _outcome(receiver))
        feed.regain_fix()
        feed.corrupt_checksums(2)
        feed.emit_epoch()  # both sentences corrupted: still no fix
        feed.send_raw(b"\x00\xff\xfe\x80garbage\r\n$GPGGA,12*\r\n" + b"A" * 500 + b"\r\n")
        feed.send_raw(nmea_sentence("GPGGA,1")[:10].encode())  # a sentence cut mid-way by a reset...
        feed.send_raw(b"\r\n")
        feed.emit_epoch()  # ...and then good data again
        await until(receiver, 9)  # 2 + 2 + 2 junk lines + the cut one + 2 (the 500-byte line is not a line)
        outcomes.append(await _outcome(receiver))
        task.cancel()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes == [GnssNoFix, "fix"]
    assert receiver.counters.checksum_errors == 2
    assert receiver.counters.format_errors == 3  # garbage, the short GGA, the cut sentence
    assert receiver.counters.overlong == 1


async def _outcome(receiver: GnssReceiver) -> type[SensorFault] | str:
    try:
        await receiver.read()
    except SensorFault as fault:
        return type(fault)
    return "fix"


def test_a_receiver_gone_quiet_turns_stale_by_the_injected_clock(feed):
    clock = FakeClock()
    receiver = receiver_for(feed.port, clock)

    async def scenario() -> None:
        task = await started(receiver)
        feed.emit_epoch()
        await until(receiver, 2)
        clock.now += 9.5
        assert (await receiver.read())[0].time == EPOCH + 500.0  # still fresh, stamped when received
        clock.now += 1.0
        with pytest.raises(SensorSilent, match="old"):
            await receiver.read()
        task.cancel()

    asyncio.run(scenario())


def test_a_missing_port_is_a_sensor_missing_fault_and_is_retried(tmp_path):
    clock = FakeClock()
    retried = asyncio.Event()

    async def sleep(seconds: float) -> None:
        retried.set()
        await asyncio.Event().wait()  # park: one failed open is enough for this test

    receiver = GnssReceiver(
        GnssConfig(url=str(tmp_path / "ttyUSB-gone"), reopen_s=5), clock=clock, wall_clock=clock.wall, sleep=sleep
    )

    async def scenario() -> None:
        task = asyncio.create_task(receiver.watch())
        await asyncio.wait_for(retried.wait(), 5)
        with pytest.raises(SensorMissing, match="cannot open GNSS port") as caught:
            await receiver.read()
        assert isinstance(caught.value, FileNotFoundError)
        task.cancel()

    asyncio.run(scenario())
    assert receiver.counters.reopens == 1


def test_a_gnss_config_needs_a_port_and_positive_limits():
    with pytest.raises(ValueError, match="url"):
        GnssConfig(url="")
    with pytest.raises(ValueError, match="max_age_s"):
        GnssConfig(url="/dev/ttyUSB1", max_age_s=0)


@settings(max_examples=500)
@given(
    garbage=st.lists(st.binary(max_size=120).filter(lambda b: not set(b) & set(b"\r\n$")), max_size=6),
    cuts=st.lists(st.integers(0, 2000), max_size=30),
    data=st.data(),
)
def test_any_chunking_of_a_stream_with_junk_lines_keeps_every_good_sentence(garbage, cuts, data):
    good = [GGA, RMC, NO_FIX, GGA]
    lines = [line.encode() + b"\r\n" for line in good] + [junk + b"\r\n" for junk in garbage if junk.strip()]
    stream = b"".join(data.draw(st.permutations(lines), label="order"))
    receiver = GnssReceiver(GnssConfig(url="unused"))
    edges = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    for start, end in zip(edges, edges[1:]):
        receiver.feed_bytes(stream[start:end], 1.0)
    assert receiver.counters.sentences == len(good)
    assert receiver.counters.lines == len(lines)
    assert receiver.counters.format_errors + receiver.counters.checksum_errors == len(lines) - len(good)


def test_the_hil_nmea_command_serves_a_receiver_at_a_stable_link_until_sigint(tmp_path):
    import signal
    import subprocess
    import sys

    import serial

    link = tmp_path / "gnss0"
    command = [sys.executable, "-m", "hil.sim.nmea", "--link", str(link), "--rate", "20", "--lat", "-33.9249", "--lon", "18.4241"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == str(link)
        with serial.serial_for_url(str(link), timeout=5) as port:
            for _ in range(10):
                try:  # the first line may be cut where the port was opened
                    report = parse_nmea(port.readline())
                except NmeaError:
                    continue
                if getattr(report, "position", None) is not None:
                    break
            assert report.position.latitude == pytest.approx(-33.9249, abs=1e-6)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert not link.exists()
