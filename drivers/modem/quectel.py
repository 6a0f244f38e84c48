"""Quectel RM500Q / RM520N (5G) and EC25 (LTE) driver: serving cell, network info, GNSS, ICCID.

Adds Quectel's own commands to the generic 27.007 driver. Sources, by the
names of the vendor manuals:

* AT+QENG="servingcell": Quectel RG50xQ&RM5xxQ Series AT Commands Manual and
  RG520N&RM520N Series AT Commands Manual, section "AT+QENG Switch on/off
  Engineering Mode"; EC25&EC21 AT Commands Manual / EC2x QENG Application Note
  for the LTE-only form.
* AT+QNWINFO: same manuals, "AT+QNWINFO Query Network Information".
* AT+QGPS / AT+QGPSLOC / AT+QGPSEND: EC25&EC21 GNSS AT Commands Manual and
  the RM5xxQ GNSS Application Note; error codes from their "Summary of Error
  Codes" (504 session is ongoing, 505 session not active, 516 not fixed now).
* AT+QCCID: "AT+QCCID Show ICCID".
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from drivers.exc import CmeError, ModemResponseError
from drivers.modem.fields import Fields, payloads, single
from drivers.modem.generic import Modem, parse_iccid
from drivers.modem.values import Cell, GnssFix, NetworkInfo, RadioMode, ServingCell

QENG_SYNTAX = ('+QENG: "servingcell",<state>,"LTE"|"NR5G-SA",... or, in EN-DC, '
               '+QENG: "servingcell",<state> / +QENG: "LTE",... / +QENG: "NR5G-NSA",... '
               '(Quectel RM5xxQ/RM520N/EC25 AT Commands Manual, AT+QENG)')

GNSS_SESSION_ONGOING = 504
GNSS_SESSION_NOT_ACTIVE = 505
GNSS_NOT_FIXED = 516


def _lte(f: Fields, i: int) -> Cell:
    """LTE fields from index `i` = <is_tdd>: <is_tdd>,<MCC>,<MNC>,<cellID>,<PCID>,<earfcn>,<freq_band_ind>,
    <UL_bandwidth>,<DL_bandwidth>,<TAC>,<RSRP>,<RSRQ>,<RSSI>,<SINR>[,<CQI>,<tx_power>],<srxlev>."""
    f.need(i + 14)
    return Cell(
        rat=RadioMode.LTE, duplex=f.opt_text(i), mcc=f.opt_text(i + 1), mnc=f.opt_text(i + 2),
        cell_id=f.opt_int(i + 3, "<cellID>", base=16), pci=f.opt_int(i + 4, "<PCID>"),
        arfcn=f.opt_int(i + 5, "<earfcn>"), band=f.opt_int(i + 6, "<freq_band_ind>"),
        tac=f.opt_int(i + 9, "<TAC>", base=16),
        rsrp_dbm=f.opt_float(i + 10, "<RSRP>"), rsrq_db=f.opt_float(i + 11, "<RSRQ>"),
        rssi_dbm=f.opt_float(i + 12, "<RSSI>"), sinr_db=f.opt_float(i + 13, "<SINR>"),
    )


def _nr_sa(f: Fields, i: int) -> Cell:
    """NR5G-SA fields from `i` = <duplex_mode>: <duplex_mode>,<MCC>,<MNC>,<cellID>,<PCID>,<TAC>,<ARFCN>,
    <band>,<NR_DL_bandwidth>,<RSRP>,<RSRQ>,<SINR>,<scs>,<srxlev>."""
    f.need(i + 12)
    return Cell(
        rat=RadioMode.NR5G_SA, duplex=f.opt_text(i), mcc=f.opt_text(i + 1), mnc=f.opt_text(i + 2),
        cell_id=f.opt_int(i + 3, "<cellID>", base=16), pci=f.opt_int(i + 4, "<PCID>"),
        tac=f.opt_int(i + 5, "<TAC>", base=16), arfcn=f.opt_int(i + 6, "<ARFCN>"),
        band=f.opt_int(i + 7, "<band>"),
        rsrp_dbm=f.opt_float(i + 9, "<RSRP>"), rsrq_db=f.opt_float(i + 10, "<RSRQ>"),
        sinr_db=f.opt_float(i + 11, "<SINR>"),
    )


def _nr_nsa(f: Fields) -> Cell:
    """+QENG: "NR5G-NSA",<MCC>,<MNC>,<PCID>,<RSRP>,<SINR>,<RSRQ>,<ARFCN>,<band>,<NR_DL_bandwidth>,<scs>.

    Note the order: SINR comes *before* RSRQ here, unlike the SA line
    (RM5xxQ manual's EN-DC example: ``"NR5G-NSA",460,01,747,-71,13,-11,627264,78,12,1``).
    """
    f.need(9)
    return Cell(
        rat=RadioMode.NR5G_NSA, mcc=f.opt_text(1), mnc=f.opt_text(2), cell_id=None,
        pci=f.opt_int(3, "<PCID>"), rsrp_dbm=f.opt_float(4, "<RSRP>"), sinr_db=f.opt_float(5, "<SINR>"),
        rsrq_db=f.opt_float(6, "<RSRQ>"), arfcn=f.opt_int(7, "<ARFCN>"), band=f.opt_int(8, "<band>"), tac=None,
    )


def parse_qeng_servingcell(lines: Sequence[str], command: str = 'AT+QENG="servingcell"') -> ServingCell:
    """AT+QENG="servingcell" for LTE, NR5G-SA and EN-DC (LTE anchor + NR5G-NSA)."""
    rows = [Fields(command, line, payload, QENG_SYNTAX) for line, payload in payloads(command, lines, "+QENG:")]
    if not rows:
        raise ModemResponseError(f"{command} answered without a +QENG line (got {list(lines)[:4]!r}); "
                                 f"expected {QENG_SYNTAX}", command=command, lines=tuple(lines))
    head = rows[0]
    if head.text(0, "the first field") != "servingcell":
        raise head.fail('the first +QENG line does not start with "servingcell"')
    state = head.text(1, "<state>")
    if state not in ("SEARCH", "LIMSRV", "NOCONN", "CONNECT"):
        raise head.fail(f"<state> {state!r} is not SEARCH, LIMSRV, NOCONN or CONNECT")
    if len(head) == 2:
        # EN-DC (or a modem that is only searching): the cells follow on their own lines.
        cells: list[Cell] = []
        for row in rows[1:]:
            rat = row.text(0, "the RAT")
            if rat == "LTE":
                cells.append(_lte(row, 1))
            elif rat == "NR5G-NSA":
                cells.append(_nr_nsa(row))
            else:
                raise row.fail(f"RAT {rat!r} is not LTE or NR5G-NSA")
        if not cells:
            return ServingCell(RadioMode.NO_SERVICE, state, ())
        mode = RadioMode.NR5G_NSA if any(c.rat is RadioMode.NR5G_NSA for c in cells) else RadioMode.LTE
        return ServingCell(mode, state, tuple(cells))
    rat = head.text(2, "the RAT")
    if rat == "LTE":
        # RM5xxQ adds <CQI>,<tx_power> before <srxlev> (20 fields); the EC25's
        # LTE line stops at <SINR>,<srxlev> (18 fields, EC2x QENG Application Note).
        # The fields up to <SINR> are at the same places in both.
        return ServingCell(RadioMode.LTE, state, (_lte(head, 3),))
    if rat == "NR5G-SA":
        return ServingCell(RadioMode.NR5G_SA, state, (_nr_sa(head, 3),))
    raise head.fail(f"RAT {rat!r} is not one this driver reports (LTE, NR5G-SA, EN-DC)")


_QNWINFO_SYNTAX = '+QNWINFO: <Act>,<oper>,<band>,<channel> or +QNWINFO: No Service (Quectel AT+QNWINFO)'


def parse_qnwinfo(lines: Sequence[str], command: str = "AT+QNWINFO") -> NetworkInfo:
    f = single(command, lines, "+QNWINFO:", _QNWINFO_SYNTAX)
    if f.line[len("+QNWINFO:"):].strip().strip('"').lower() == "no service":
        return NetworkInfo(None, None, None, None)
    f.need(4)
    plmn = f.text(1, "<oper>")
    if not (plmn.isdigit() and len(plmn) in (5, 6)):
        raise f.fail(f"<oper> {plmn!r} is not MCC+MNC")
    return NetworkInfo(f.text(0, "<Act>"), plmn, f.text(2, "<band>"), f.int(3, "<channel>"))


_DM = re.compile(r"(\d{2,3})(\d{2}\.\d+)([NSEW])")


def _coordinate(f: Fields, text: str, name: str, limit: float) -> float:
    """Decimal degrees (<mode> 2) or ddmm.mmmm[N/S] (<mode> 0)."""
    m = _DM.fullmatch(text)
    if m is not None:
        value = int(m.group(1)) + float(m.group(2)) / 60
        if m.group(3) in "SW":
            value = -value
    else:
        try:
            value = float(text)
        except ValueError:
            raise f.fail(f"{name} {text!r} is neither decimal degrees nor ddmm.mmmm[NSEW]") from None
    if not -limit <= value <= limit or value != value:
        raise f.fail(f"{name} {text!r} is outside ±{limit}°")
    return value


def parse_qgpsloc(lines: Sequence[str], command: str = "AT+QGPSLOC=2") -> GnssFix:
    """``+QGPSLOC: <UTC>,<latitude>,<longitude>,<HDOP>,<altitude>,<fix>,<COG>,<spkm>,<spkn>,<date>,<nsat>``."""
    f = single(command, lines, "+QGPSLOC:", "+QGPSLOC: <UTC>,<lat>,<lon>,<HDOP>,<altitude>,<fix>,<COG>,<spkm>,"
               "<spkn>,<date>,<nsat> (Quectel GNSS AT Commands Manual, AT+QGPSLOC)")
    f.need(11)
    utc, date = f.text(0, "<UTC>"), f.text(9, "<date>")
    try:
        hms = dt.datetime.strptime(utc.split(".")[0], "%H%M%S")
        day = dt.datetime.strptime(date, "%d%m%y")
    except ValueError:
        raise f.fail(f"<UTC> {utc!r} / <date> {date!r} are not hhmmss.sss / ddmmyy") from None
    frac = utc.split(".")[1] if "." in utc else ""
    micro = int((frac + "000000")[:6]) if frac.isdigit() else 0
    when = day.replace(hour=hms.hour, minute=hms.minute, second=hms.second, microsecond=micro,
                       tzinfo=dt.timezone.utc)
    fix_n = f.opt_int(5, "<fix>")
    if fix_n is not None and fix_n not in (2, 3):
        raise f.fail(f"<fix> {fix_n} is not 2 (2D) or 3 (3D)")
    nsat = f.opt_int(10, "<nsat>")
    if nsat is not None and not 0 <= nsat <= 99:
        raise f.fail(f"<nsat> {nsat} is outside 0..99")
    return GnssFix(
        time=when,
        latitude=_coordinate(f, f.text(1, "<latitude>"), "<latitude>", 90.0),
        longitude=_coordinate(f, f.text(2, "<longitude>"), "<longitude>", 180.0),
        hdop=f.opt_float(3, "<HDOP>"), altitude_m=f.opt_float(4, "<altitude>"), fix_dimension=fix_n,
        course_deg=f.opt_float(6, "<COG>"), speed_kmh=f.opt_float(7, "<spkm>"), satellites=nsat,
    )


class QuectelModem(Modem):
    """Quectel RM500Q / RM520N / EC25 (the parsers handle each model's QENG form)."""

    family = "quectel"

    async def iccid(self) -> str:
        return parse_iccid(await self._lines("AT+QCCID", "+QCCID:"), "AT+QCCID")

    async def serving_cell(self) -> ServingCell:
        return parse_qeng_servingcell(await self._lines('AT+QENG="servingcell"', "+QENG:"))

    async def network_info(self) -> NetworkInfo:
        return parse_qnwinfo(await self._lines("AT+QNWINFO", "+QNWINFO:"))

    async def gnss_start(self) -> None:
        """AT+QGPS=1; an already running session (CME 504) counts as started."""
        try:
            await self.channel.command("AT+QGPS=1")
        except CmeError as exc:
            if exc.code != GNSS_SESSION_ONGOING:
                raise

    async def gnss_stop(self) -> None:
        try:
            await self.channel.command("AT+QGPSEND")
        except CmeError as exc:
            if exc.code != GNSS_SESSION_NOT_ACTIVE:
                raise

    async def gnss_location(self) -> GnssFix | None:
        """The current fix (AT+QGPSLOC=2, decimal degrees), or None while there is none (CME 516).

        A session that is not running (CME 505) raises: call `gnss_start()` first.
        """
        try:
            lines = await self._lines("AT+QGPSLOC=2", "+QGPSLOC:")
        except CmeError as exc:
            if exc.code == GNSS_NOT_FIXED:
                return None
            raise
        return parse_qgpsloc(lines)
