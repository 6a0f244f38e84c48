"""Modem response parsers against samples from the vendors' AT manuals, and against garbage.

Samples live in tests/drivers/samples/ (each file names its manual and
section). The hypothesis tests mutate those samples and feed random lines:
a parser returns a typed value or raises `ModemResponseError`, nothing else.
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.exc import ModemResponseError, UnknownModemError
from drivers.modem.detect import family_of, parse_ati
from drivers.modem.generic import (
    parse_cclk,
    parse_cesq,
    parse_cfun,
    parse_cops,
    parse_csq,
    parse_iccid,
    parse_imei,
    parse_imsi,
    parse_registration,
    parse_registration_urc,
)
from drivers.modem.quectel import parse_qeng_servingcell, parse_qgpsloc, parse_qnwinfo
from drivers.modem.simcom import parse_cgpsinfo, parse_cpsi
from drivers.modem.values import (
    AccessTechnology,
    Cell,
    ExtendedSignalQuality,
    Functionality,
    NetworkInfo,
    Operator,
    RadioMode,
    Registration,
    RegistrationStatus,
    ServingCell,
    SignalQuality,
)

SAMPLES = Path(__file__).parent / "samples"


def load(name: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{case: (command, response lines without the final OK)} from a samples file."""
    cases: dict[str, tuple[str, tuple[str, ...]]] = {}
    case, body = None, []
    for raw in (SAMPLES / name).read_text().splitlines() + ["[end]"]:
        if raw.startswith("#") or not raw.strip():
            continue
        m = re.fullmatch(r"\[(\w+)\]", raw.strip())
        if m:
            if case is not None:
                lines = tuple(line for line in body[1:] if line != "OK")
                cases[case] = (body[0], lines)
            case, body = m.group(1), []
            continue
        body.append(raw)
    return cases


RM5XX = load("quectel_rm5xxq.txt")
EC25 = load("quectel_ec25.txt")
SIM7600 = load("simcom_sim7600.txt")
SIM8200 = load("simcom_sim8200.txt")
TS27007 = load("3gpp_27007.txt")


def test_every_sample_file_names_its_manual():
    for path in SAMPLES.glob("*.txt"):
        header = path.read_text().splitlines()[0]
        assert header.startswith("# ") and ("Manual" in header or "TS 27.007" in header), path.name


# --- Quectel ------------------------------------------------------------------------------

def test_qeng_nr5g_standalone_sample():
    sc = parse_qeng_servingcell(RM5XX["nr5g_sa"][1])
    assert sc == ServingCell(RadioMode.NR5G_SA, "NOCONN", (Cell(
        rat=RadioMode.NR5G_SA, duplex="TDD", mcc="460", mnc="00", cell_id=0xA0117F003, pci=287, tac=0x1000D7,
        arfcn=504990, band=41, rsrp_dbm=-99.0, rsrq_db=-13.0, sinr_db=0.0),))
    assert sc.primary is sc.nr


def test_qeng_lte_sample_with_cqi_and_tx_power():
    cell = parse_qeng_servingcell(RM5XX["lte"][1]).primary
    assert cell == Cell(rat=RadioMode.LTE, duplex="FDD", mcc="460", mnc="00", cell_id=0x8F381C5, pci=107,
                        arfcn=1300, band=3, tac=0x3193, rsrp_dbm=-98.0, rsrq_db=-13.0, rssi_dbm=-70.0, sinr_db=-3.0)


def test_qeng_endc_sample_gives_lte_anchor_and_nr_cell_with_nsa_field_order():
    sc = parse_qeng_servingcell(RM5XX["endc"][1])
    assert sc.mode is RadioMode.NR5G_NSA and sc.state == "NOCONN"
    lte, nr = sc.cells
    assert (lte.rat, lte.cell_id, lte.pci, lte.band, lte.tac, lte.rsrp_dbm, lte.sinr_db) == \
        (RadioMode.LTE, 0x4940206, 427, 3, 0xBFF, -94.0, 9.0)
    # "NR5G-NSA",<MCC>,<MNC>,<PCID>,<RSRP>,<SINR>,<RSRQ>,<ARFCN>,<band>: SINR before RSRQ
    assert (nr.pci, nr.rsrp_dbm, nr.sinr_db, nr.rsrq_db, nr.arfcn, nr.band) == (747, -71.0, 13.0, -11.0, 627264, 78)
    assert sc.nr is nr


def test_qeng_while_searching_has_no_cell():
    assert parse_qeng_servingcell(RM5XX["search"][1]) == ServingCell(RadioMode.NO_SERVICE, "SEARCH", ())


def test_qeng_dashes_become_none():
    cell = parse_qeng_servingcell(RM5XX["nr5g_sa_dashes"][1]).primary
    assert cell is not None and cell.sinr_db is None and cell.rsrp_dbm == -88.0


def test_qeng_ec25_short_lte_line():
    cell = parse_qeng_servingcell(EC25["qeng_lte"][1]).primary
    assert cell is not None
    assert (cell.cell_id, cell.pci, cell.arfcn, cell.band, cell.tac) == (0x47ADF04, 160, 100, 1, 0xF274)
    assert (cell.rsrp_dbm, cell.rsrq_db, cell.rssi_dbm, cell.sinr_db) == (-76.0, -7.0, -48.0, 28.0)


def test_qnwinfo_samples():
    assert parse_qnwinfo(RM5XX["qnwinfo_nr"][1]) == NetworkInfo("TDD NR5G", "46000", "NR5G BAND 79", 721824)
    none = parse_qnwinfo(RM5XX["qnwinfo_none"][1])
    assert not none.in_service and none == NetworkInfo(None, None, None, None)


def test_qgpsloc_manual_example_in_both_coordinate_modes():
    zero = parse_qgpsloc(EC25["qgpsloc_mode0"][1])
    two = parse_qgpsloc(EC25["qgpsloc_mode2"][1])
    assert zero.time == two.time == dt.datetime(2013, 5, 11, 6, 19, 51, tzinfo=dt.timezone.utc)
    assert zero.latitude == pytest.approx(31 + 50.7223 / 60) == pytest.approx(two.latitude, abs=1e-5)
    assert zero.longitude == pytest.approx(117 + 11.9293 / 60) == pytest.approx(two.longitude, abs=1e-5)
    assert (two.hdop, two.altitude_m, two.fix_dimension, two.satellites) == (0.7, 62.2, 2, 9)


def test_quectel_identity_and_iccid_samples():
    ident = parse_ati(RM5XX["ati"][1])
    assert (ident.manufacturer, ident.model, ident.revision, ident.family) == \
        ("Quectel", "RM500Q-GL", "RM500QGLABR11A06M4G", "rm500q")
    assert parse_ati(EC25["ati"][1]).family == "ec25"
    assert parse_iccid(EC25["qccid"][1], "AT+QCCID") == "89860025128306012474"


def test_csq_samples():
    assert parse_csq(EC25["csq"][1]) == SignalQuality(-57, 0)
    assert parse_csq(EC25["csq_unknown"][1]) == SignalQuality(None, None)


def test_cclk_sample_with_zone():
    assert parse_cclk(EC25["cclk"][1]) == dt.datetime(2008, 1, 4, 0, 19, 43, tzinfo=dt.timezone.utc)
    west = parse_cclk(TS27007["cclk_west"][1])
    assert west.utcoffset() == dt.timedelta(hours=-5)
    assert west.astimezone(dt.timezone.utc) == dt.datetime(2025, 1, 1, 4, 59, 59, tzinfo=dt.timezone.utc)


# --- SIMCom -------------------------------------------------------------------------------

def test_cpsi_lte_manual_example_is_in_tenths():
    sc = parse_cpsi(SIM7600["cpsi_lte"][1])
    assert sc.mode is RadioMode.LTE and sc.state == "Online"
    assert sc.primary == Cell(rat=RadioMode.LTE, mcc="460", mnc="11", tac=0x5A1E, cell_id=187214780, pci=257,
                              band=3, arfcn=1850, rsrq_db=-9.4, rsrp_dbm=-85.0, rssi_dbm=-54.5, sinr_db=15.0)


def test_cpsi_no_service():
    assert parse_cpsi(SIM7600["cpsi_no_service"][1]) == ServingCell(RadioMode.NO_SERVICE, "Online", ())


def test_cpsi_nr5g_standalone_and_endc():
    sa = parse_cpsi(SIM8200["cpsi_nr5g_sa"][1]).primary
    assert sa is not None and (sa.rat, sa.mcc, sa.mnc, sa.tac, sa.cell_id, sa.band, sa.arfcn) == \
        (RadioMode.NR5G_SA, "242", "12", 0x765D, 4955280, 78, 640704)
    assert (sa.rsrp_dbm, sa.rsrq_db, sa.sinr_db) == pytest.approx((-74.0, -11.0, 24.0))
    endc = parse_cpsi(SIM8200["cpsi_endc"][1])
    assert endc.mode is RadioMode.NR5G_NSA and [c.rat for c in endc.cells] == [RadioMode.LTE, RadioMode.NR5G_NSA]
    nr = endc.nr
    assert nr is not None and (nr.pci, nr.band, nr.arfcn) == (644, 78, 627264)
    assert (nr.rsrp_dbm, nr.rsrq_db, nr.sinr_db) == pytest.approx((-96.0, -12.0, 9.5))


def test_cgpsinfo_manual_example_and_no_fix():
    fix = parse_cgpsinfo(SIM7600["cgpsinfo"][1])
    assert fix is not None
    assert fix.latitude == pytest.approx(31 + 13.343286 / 60)
    assert fix.longitude == pytest.approx(121 + 21.234064 / 60)
    assert fix.time == dt.datetime(2011, 3, 25, 7, 28, 9, 300000, tzinfo=dt.timezone.utc)
    assert (fix.altitude_m, fix.speed_kmh, fix.course_deg) == (44.1, 0.0, 0.0)
    assert parse_cgpsinfo(SIM7600["cgpsinfo_no_fix"][1]) is None


def test_simcom_identity_and_iccid_samples():
    ident = parse_ati(SIM7600["ati"][1])
    assert (ident.manufacturer, ident.model, ident.revision, ident.family) == \
        ("SIMCOM INCORPORATED", "SIMCOM_SIM7600E-H", "SIM7600M22_V1.1", "sim7600")
    assert parse_iccid(SIM7600["ciccid"][1], "AT+CICCID") == "89860318740213408575"


# --- 3GPP TS 27.007 -----------------------------------------------------------------------

def test_cesq_sample_converts_indices_to_units():
    assert parse_cesq(TS27007["cesq"][1]) == ExtendedSignalQuality(None, None, None, None, -4.5, -79)


def test_registration_samples():
    assert parse_registration(TS27007["cereg_registered"][1]) == Registration(
        "EPS", RegistrationStatus.HOME, 0x3193, 0x08F381C5, AccessTechnology.E_UTRAN)
    searching = parse_registration(TS27007["cereg_searching"][1])
    assert searching.status is RegistrationStatus.SEARCHING and not searching.registered
    nr = parse_registration(TS27007["c5greg_registered"][1], "+C5GREG:", "AT+C5GREG?")
    assert nr == Registration("5GS", RegistrationStatus.HOME, 0x1000D7, 0xA0117F003, AccessTechnology.NR_5GCN)


def test_registration_urc_form_has_no_n():
    assert parse_registration_urc('+CEREG: 5,"1A2B","01A2B3C4",7') == Registration(
        "EPS", RegistrationStatus.ROAMING, 0x1A2B, 0x01A2B3C4, AccessTechnology.E_UTRAN)
    assert parse_registration_urc("+C5GREG: 2").status is RegistrationStatus.SEARCHING


def test_cops_samples():
    assert parse_cops(TS27007["cops_numeric"][1]) == Operator(0, "46000", 2, AccessTechnology.E_UTRAN)
    assert parse_cops(TS27007["cops_long"][1]).name == "CHINA MOBILE"
    assert parse_cops(TS27007["cops_none"][1]) == Operator(0, None, None, None)


def test_identity_samples():
    assert parse_imei(TS27007["cgsn_1"][1]) == "490154203237518"
    assert parse_imei(TS27007["cgsn"][1]) == "867584034313614"
    assert parse_imsi(TS27007["cimi"][1]) == "460110123456789"
    assert parse_cfun(TS27007["cfun"][1]) is Functionality.FULL


def test_an_imei_with_a_wrong_check_digit_is_refused():
    with pytest.raises(ModemResponseError, match="check digit"):
        parse_imei(["490154203237519"])


def test_iccid_padding_and_hex_digits():
    assert parse_iccid(["+ICCID: 8949020000123456789F"]) == "8949020000123456789"
    assert parse_iccid(["+ICCID: 898600700907A6019125"]) == "898600700907A6019125"
    with pytest.raises(ModemResponseError, match="89 followed"):
        parse_iccid(["+QCCID: 12345"])


def test_model_families():
    assert [family_of(m) for m in ("RM500Q-GL", "RM520N-GL", "EC25-E", "SIMCOM_SIM7600G-H",
                                   "SIMCOM_SIM8200EA-M2", "BG96")] == \
        ["rm500q", "rm520n", "ec25", "sim7600", "sim8200", "generic"]
    with pytest.raises(UnknownModemError):
        parse_ati(["OK?"])


def test_parse_errors_say_which_command_line_and_field():
    with pytest.raises(ModemResponseError) as info:
        parse_csq(["+CSQ: x,99"])
    msg = str(info.value)
    assert "AT+CSQ" in msg and "+CSQ: x,99" in msg and "<rssi>" in msg and "27.007" in msg
    assert isinstance(info.value, ValueError)


# --- garbage in, typed error out ---------------------------------------------------------

PARSERS = [
    (parse_csq, TS27007["cesq"][1] and EC25["csq"][1]),
    (parse_cesq, TS27007["cesq"][1]),
    (parse_registration, TS27007["cereg_registered"][1]),
    (lambda lines: parse_registration(lines, "+C5GREG:", "AT+C5GREG?"), TS27007["c5greg_registered"][1]),
    (parse_cops, TS27007["cops_long"][1]),
    (parse_cclk, EC25["cclk"][1]),
    (parse_cfun, TS27007["cfun"][1]),
    (parse_imei, TS27007["cgsn_1"][1]),
    (parse_imsi, TS27007["cimi"][1]),
    (parse_iccid, EC25["qccid"][1]),
    (parse_qeng_servingcell, RM5XX["nr5g_sa"][1]),
    (parse_qeng_servingcell, RM5XX["endc"][1]),
    (parse_qeng_servingcell, RM5XX["lte"][1]),
    (parse_qnwinfo, RM5XX["qnwinfo_nr"][1]),
    (parse_qgpsloc, EC25["qgpsloc_mode2"][1]),
    (parse_qgpsloc, EC25["qgpsloc_mode0"][1]),
    (parse_cpsi, SIM7600["cpsi_lte"][1]),
    (parse_cpsi, SIM8200["cpsi_endc"][1]),
    (parse_cgpsinfo, SIM7600["cgpsinfo"][1]),
    (parse_ati, SIM7600["ati"][1]),
]

_field = st.one_of(st.text(max_size=12), st.integers(-10**12, 10**12).map(str), st.sampled_from(
    ["", "-", '"', '""', "0x", "FFFFFFFFFFFFFFFFFF", "nan", "inf", "-32768", "1e309", "99", "255", "\x00", "٣"]))


@st.composite
def mutated(draw, lines: tuple[str, ...]):
    lines = list(lines)
    if not lines or draw(st.integers(0, 9)) == 0:
        return draw(st.lists(st.text(max_size=60), max_size=4))
    i = draw(st.integers(0, len(lines) - 1))
    head, sep, rest = lines[i].partition(":")
    fields = rest.split(",") if sep else lines[i].split(",")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
        j = draw(st.integers(0, max(0, len(fields) - 1)))
        if op == "replace" and fields:
            fields[j] = draw(_field)
        elif op == "delete" and fields:
            del fields[j]
        elif op == "insert":
            fields.insert(j, draw(_field))
        else:
            fields = fields[:j]
    lines[i] = (head + sep + ",".join(fields)) if sep else ",".join(fields)
    return lines


@pytest.mark.parametrize("parser,sample", PARSERS, ids=lambda x: getattr(x, "__name__", "sample"))
@settings(max_examples=150)
@given(data=st.data())
def test_mutated_samples_give_a_value_or_a_typed_error(parser, sample, data):
    lines = data.draw(mutated(sample))
    try:
        parser(lines)
    except (ModemResponseError, UnknownModemError):
        pass
