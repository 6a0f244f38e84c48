"""Reading the modems' answer lines (TS 27.007 and the vendors' formats): garbage is a ModemGarbage, never a crash."""

import cellular
import modemsetup
import quectel
from check import equal, raises
from errors import ModemGarbage


def test_registration_status_reads_from_the_read_form_and_the_urc():
    equal(cellular.parse_cereg("+CEREG: 0,1"), 1)
    equal(cellular.parse_cereg('+CEREG: 2,5,"1A2B","01A2B3C4",9'), 5)
    equal(cellular.parse_cereg("+CEREG: 3"), 3)
    equal(cellular.parse_cereg('+CEREG: 1,"1A2B","01A2B3C4",9'), 1)
    for bad in ("+CEREG: x,1", "+CEREG:", "+CREG: 0,1", "+CEREG: 0,\u00ff"):
        raises(ModemGarbage, cellular.parse_cereg, bad)


def test_network_time_is_converted_to_utc_from_quarter_hour_zones():
    equal(modemsetup.parse_cclk('+CCLK: "25/03/14,10:26:53+04"'), 1741944413)
    equal(modemsetup.parse_cclk('+CCLK: "25/03/14,05:26:53-16"'), 1741944413)
    for bad in ('+CCLK: "25/13/14,10:26:53+04"', '+CCLK: "garbage"', "+CCLK: ", '+CCLK: "25/03/14,99:26:53+04"'):
        raises(ModemGarbage, modemsetup.parse_cclk, bad)


def test_hex_payloads_must_match_their_announced_length():
    equal(quectel._unhex('"0A0B"', 2, "t"), b"\n\x0b")
    equal(quectel._unhex("0a0b", 2, "t"), b"\n\x0b")
    raises(ModemGarbage, quectel._unhex, "0A0B0C", 2, "t")
    raises(ModemGarbage, quectel._unhex, "0G0B", 2, "t")


def test_string_parameters_that_would_break_the_command_line_are_refused():
    equal(cellular.quoted("lender.example"), '"lender.example"')
    for bad in ('a"b', "a\rb", "a\nb"):
        raises(ValueError, cellular.quoted, bad)
