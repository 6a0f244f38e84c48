"""The NMEA 0183 parser against receiver-manual samples and a flood of generated bad input."""
from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from drivers.exc import DriverError, NmeaChecksumError, NmeaError, NmeaFormatError
from drivers.gnss import GgaReport, Position, RmcReport, Sentence, parse_nmea, parse_sentence
from hil.sim.nmea import NmeaFeed, format_latitude, format_longitude, nmea_sentence

# Samples transcribed from receiver documentation and real receiver output;
# each checksum was verified by hand (XOR of the body).
HAICOM_GGA = "$GPGGA,104549.04,2447.2038,N,12100.4990,E,1,06,01.7,00078.8,M,0016.3,M,,*5C"
"""Haicom HI-505SD user manual, "NMEA Messages — GGA", example."""
UBLOX_CAPTURE_GGA = "$GPGGA,054423.00,3746.79275,N,12224.40754,W,1,05,2.58,73.0,M,-29.7,M,,*58"
"""A u-blox receiver's log (negative geoid separation, western longitude)."""
UBLOX_NO_FIX_GGA = "$GPGGA,,,,,,0,00,99.99,,,,,,*48"
UBLOX_NO_FIX_RMC = "$GPRMC,,V,,,,,,,,,,N*53"
"""A u-blox NEO-6M's first output after power-up, before any fix."""
SIRF_RMC = "$GPRMC,161229.487,A,3723.2475,N,12158.3416,W,0.13,309.62,120598,,*10"
"""SiRF NMEA reference (reproduced in Telit GM862-GPS Software User Guide §5.4.5, Table H).
The Telit copy prints a stray space in the empty magnetic-variation field; the
checksum *10 matches only without it, so that is the form used here."""
VANTRON_RMC = "$GPRMC,081836,A,3751.65,S,14507.36,E,000.0,360.0,130998,011.3,E*62"
"""Vantron VT-M2M-TC user's manual §6.2.4 "GPRMC", ex1 (southern and eastern hemispheres)."""
UBLOX_RMC_MODE = "$GPRMC,054423.00,A,3746.79275,N,12224.40754,W,1.730,,050815,,,A*67"
"""The same u-blox log: NMEA 2.3 RMC with the mode indicator field."""


def test_haicom_manual_gga_gives_position_fix_quality_and_hdop():
    report = parse_nmea(HAICOM_GGA)
    assert isinstance(report, GgaReport) and report.has_fix
    assert report.position == Position(pytest.approx(24 + 47.2038 / 60), pytest.approx(121 + 0.4990 / 60))
    assert (report.quality, report.satellites, report.hdop) == (1, 6, 1.7)
    assert (report.altitude_m, report.geoid_separation_m) == (78.8, 16.3)
    assert report.utc_time == dt.time(10, 45, 49, 40_000, tzinfo=dt.timezone.utc)


def test_western_longitude_and_negative_geoid_separation_are_signed():
    report = parse_nmea(UBLOX_CAPTURE_GGA)
    assert report.position.longitude == pytest.approx(-(122 + 24.40754 / 60))
    assert report.geoid_separation_m == -29.7 and report.hdop == 2.58


def test_receiver_without_fix_says_so_in_gga_and_rmc():
    gga, rmc = parse_nmea(UBLOX_NO_FIX_GGA), parse_nmea(UBLOX_NO_FIX_RMC)
    assert isinstance(gga, GgaReport) and not gga.has_fix and gga.position is None and gga.hdop == 99.99
    assert isinstance(rmc, RmcReport) and not rmc.has_fix and rmc.mode == "N" and rmc.utc is None


def test_sirf_rmc_gives_date_speed_and_course():
    report = parse_nmea(SIRF_RMC)
    assert isinstance(report, RmcReport) and report.has_fix and report.mode is None
    assert report.utc == dt.datetime(1998, 5, 12, 16, 12, 29, 487_000, tzinfo=dt.timezone.utc)
    assert (report.speed_knots, report.course_deg) == (0.13, 309.62)
    assert report.position.latitude == pytest.approx(37 + 23.2475 / 60)


def test_southern_eastern_rmc_from_vantron_manual():
    report = parse_nmea(VANTRON_RMC)
    assert report.position == Position(pytest.approx(-(37 + 51.65 / 60)), pytest.approx(145 + 7.36 / 60))
    assert report.utc.date() == dt.date(1998, 9, 13)
    assert parse_nmea(nmea_sentence("GPRMC,081836,A,3751.65,S,14507.36,E,000.0,360.0,200525,011.3,E")).utc.year == 2025


def test_rmc_with_mode_indicator_and_empty_course():
    report = parse_nmea(UBLOX_RMC_MODE)
    assert report.mode == "A" and report.course_deg is None and report.speed_knots == 1.730


def test_other_sentences_pass_through_untyped():
    gsa = nmea_sentence("GPGSA,A,3,14,22,19,04,27,,,,,,,,6.04,2.58,5.46")
    assert parse_nmea(gsa) == Sentence("GP", "GSA", ("A", "3", "14", "22", "19", "04", "27", "", "", "", "", "", "", "", "6.04", "2.58", "5.46"))
    assert parse_nmea(nmea_sentence("PUBX,00,081350.00")).talker == "P"


def test_a_corrupted_sentence_is_a_checksum_error_that_explains_itself():
    corrupted = HAICOM_GGA.replace("2447.2038", "2447.2039")
    with pytest.raises(NmeaChecksumError, match="sentence says 5C, content gives 5D") as caught:
        parse_sentence(corrupted)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, DriverError)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("GPGGA,1*00", "start with"),
        ("$GPGGA,104549.04", "checksum"),
        ("$GPGGA,104549.04*5", "checksum"),
        ("$GPGGA,10*ZZ", "hex"),
        (nmea_sentence("gpgga,1"), "address"),
        (nmea_sentence("GPGGA,1,2"), "14 fields"),
        (nmea_sentence("GPGGA,256000,,,,,0,00,99.99,,,,,,"), "UTC time"),
        (nmea_sentence("GPGGA,120000,9100.0000,N,00000.0000,E,1,05,1.0,1.0,M,1.0,M,,"), "beyond 90"),
        (nmea_sentence("GPGGA,120000,4560.0000,N,00000.0000,E,1,05,1.0,1.0,M,1.0,M,,"), "latitude"),
        (nmea_sentence("GPGGA,120000,4500.0000,N,,,1,05,1.0,1.0,M,1.0,M,,"), "both"),
        (nmea_sentence("GPGGA,120000,4500.0000,N,00000.0000,E,1,05,nan,1.0,M,1.0,M,,"), "HDOP"),
        (nmea_sentence("GPRMC,120000,X,,,,,,,,,"), "status"),
        (nmea_sentence("GPRMC,120000,A,4500.0,N,00700.0,E,0.1,0.0,310299,,"), "date"),
        ("$GPGGA,\x00*00", "characters"),
        ("$GPGGA," + "1," * 100 + "*00", "exceeds"),
    ],
)
def test_malformed_sentences_are_typed_format_errors(line, reason):
    with pytest.raises(NmeaFormatError, match=reason):
        parse_nmea(line)


SAMPLES = [HAICOM_GGA, UBLOX_CAPTURE_GGA, UBLOX_NO_FIX_GGA, UBLOX_NO_FIX_RMC, SIRF_RMC, VANTRON_RMC, UBLOX_RMC_MODE]


def test_every_truncation_of_every_sample_is_rejected():
    for sample in SAMPLES:
        for cut in range(len(sample)):
            with pytest.raises(NmeaError):
                parse_nmea(sample[:cut])
        assert parse_nmea(sample + "\r\n") == parse_nmea(sample)


@settings(max_examples=2000)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), st.text(alphabet="$GPRMCA,.*0123456789NSEWV\r\n", max_size=120)))
def test_garbage_lines_raise_only_nmea_errors(line):
    try:
        parse_nmea(line)
    except NmeaError:
        pass


@settings(max_examples=1500)
@given(sample=st.sampled_from(SAMPLES), data=st.data())
def test_any_single_character_change_is_caught(sample, data):
    index = data.draw(st.integers(0, len(sample) - 1), label="index")
    replacement = data.draw(st.characters(codec="ascii"), label="replacement")
    assume(replacement.upper() != sample[index].upper() or index < len(sample) - 2)
    assume(replacement != sample[index])
    try:
        parse_nmea(sample[:index] + replacement + sample[index + 1 :])
    except NmeaError:
        return
    # Only a change of case in the checksum digits keeps the sentence valid.
    assert index >= len(sample) - 2 and replacement.upper() == sample[index].upper()


@settings(max_examples=1000)
@given(
    latitude=st.floats(-89.99, 89.99),
    longitude=st.floats(-179.99, 179.99),
    hdop=st.floats(0.5, 50.0),
    satellites=st.integers(0, 40),
    talker=st.sampled_from(["GP", "GN", "GL", "GA", "BD"]),
)
def test_simulated_receiver_sentences_parse_back_to_their_position(latitude, longitude, hdop, satellites, talker):
    feed_lines = _epoch(latitude, longitude, hdop, satellites, talker)
    gga, rmc = (parse_nmea(line) for line in feed_lines)
    assert gga.talker == talker and gga.satellites == satellites and gga.hdop == pytest.approx(hdop, abs=0.005)
    for report in (gga, rmc):
        assert report.has_fix
        assert report.position.latitude == pytest.approx(latitude, abs=1e-6)
        assert report.position.longitude == pytest.approx(longitude, abs=1e-6)


def _epoch(latitude, longitude, hdop, satellites, talker) -> list[str]:
    global _feed
    if _feed is None:
        _feed = NmeaFeed()
    _feed.talker = talker
    _feed.move_to(latitude, longitude)
    _feed.set_hdop(hdop)
    _feed.set_satellites(satellites)
    return _feed.sentences()


_feed: NmeaFeed | None = None


@pytest.fixture(autouse=True, scope="module")
def _close_feed():
    yield
    if _feed is not None:
        _feed.close()


def test_coordinate_formatting_carries_rounding_into_the_next_degree():
    assert format_latitude(47.9999999999) == ("4800.00000", "N")
    assert format_longitude(-8.9999999999) == ("00900.00000", "W")
