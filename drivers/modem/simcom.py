"""SIMCom SIM7600 (LTE) and SIM8200 (5G) driver: serving cell (AT+CPSI?), GNSS (AT+CGPSINFO), ICCID.

Sources, by the names of the vendor manuals: SIM7500_SIM7600 Series AT
Command Manual ("AT+CPSI Inquiring UE system information", "AT+CICCID Read
ICCID from SIM card", "AT+CGPS Start/Stop GPS session", "AT+CGPSINFO Get GPS
fixed position information") and SIM82XX_SIM83XX Series AT Command Manual
for the NR5G_SA / NR5G_NSA forms of AT+CPSI.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from drivers.exc import AtResultError, ModemResponseError
from drivers.modem.fields import Fields, payloads, single
from drivers.modem.generic import Modem, parse_iccid
from drivers.modem.values import Cell, GnssFix, RadioMode, ServingCell

CPSI_SYNTAX = ("+CPSI: <System Mode>,<Operation Mode>[,<MCC>-<MNC>,<TAC>,<SCellID>,<PCellID>,<Frequency Band>,"
               "<earfcn>,...] (SIMCom SIM7600 / SIM8200 AT Command Manual, AT+CPSI)")

_BAND = re.compile(r"(?:EUTRAN-BAND|NR5G_BAND)(\d+)")


def _plmn(f: Fields, i: int) -> tuple[str, str]:
    text = f.text(i, "<MCC>-<MNC>")
    mcc, sep, mnc = text.partition("-")
    if not sep or not (mcc.isdigit() and len(mcc) == 3 and mnc.isdigit() and len(mnc) in (2, 3)):
        raise f.fail(f"<MCC>-<MNC> {text!r} is not ddd-dd(d)")
    return mcc, mnc


def _band(f: Fields, i: int) -> int:
    text = f.text(i, "<Frequency Band>")
    m = _BAND.fullmatch(text)
    if m is None:
        raise f.fail(f"<Frequency Band> {text!r} is not EUTRAN-BANDn or NR5G_BANDn")
    return int(m.group(1))


def _tac(f: Fields, i: int) -> int:
    text = f.text(i, "<TAC>")
    if not text.lower().startswith("0x"):
        raise f.fail(f"<TAC> {text!r} is not 0x-prefixed hex")
    return f.int(i, "<TAC>", base=16)


def _lte(f: Fields) -> Cell:
    # SIM7600 manual example: "+CPSI: LTE,Online,460-11,0x5A1E,187214780,257,EUTRAN-BAND3,1850,5,5,
    # -94,-850,-545,15": <RSRQ>,<RSRP>,<RSSI> are in tenths of dB / dBm (-9.4 dB, -85.0 dBm, -54.5 dBm);
    # <RSSNR> is whole dB. Note RSRQ comes before RSRP here, the reverse of AT+QENG.
    f.need(14)
    mcc, mnc = _plmn(f, 2)
    return Cell(rat=RadioMode.LTE, mcc=mcc, mnc=mnc, tac=_tac(f, 3), cell_id=f.opt_int(4, "<SCellID>"),
                pci=f.opt_int(5, "<PCellID>"), band=_band(f, 6), arfcn=f.opt_int(7, "<earfcn>"),
                rsrq_db=f.opt_float(10, "<RSRQ>", scale=0.1), rsrp_dbm=f.opt_float(11, "<RSRP>", scale=0.1),
                rssi_dbm=f.opt_float(12, "<RSSI>", scale=0.1), sinr_db=f.opt_float(13, "<RSSNR>"))


def _nr_sa(f: Fields) -> Cell:
    # SIM8200: "+CPSI: NR5G_SA,Online,<MCC>-<MNC>,<TAC>,<SCellID>,<PCellID>,<Frequency Band>,<earfcn>,
    # <RSRP>,<RSRQ>,<SINR>" — all three in tenths (-740,-110,240 = -74.0 dBm, -11.0 dB, 24.0 dB).
    f.need(11)
    mcc, mnc = _plmn(f, 2)
    return Cell(rat=RadioMode.NR5G_SA, mcc=mcc, mnc=mnc, tac=_tac(f, 3), cell_id=f.opt_int(4, "<SCellID>"),
                pci=f.opt_int(5, "<PCellID>"), band=_band(f, 6), arfcn=f.opt_int(7, "<earfcn>"),
                rsrp_dbm=f.opt_float(8, "<RSRP>", scale=0.1), rsrq_db=f.opt_float(9, "<RSRQ>", scale=0.1),
                sinr_db=f.opt_float(10, "<SINR>", scale=0.1))


def _nr_nsa(f: Fields) -> Cell:
    # SIM8200 EN-DC adds: "+CPSI: NR5G_NSA,<PCellID>,<Frequency Band>,<earfcn>,<RSRP>,<RSRQ>,<SINR>" (tenths).
    f.need(7)
    return Cell(rat=RadioMode.NR5G_NSA, mcc=None, mnc=None, tac=None, cell_id=None,
                pci=f.opt_int(1, "<PCellID>"), band=_band(f, 2), arfcn=f.opt_int(3, "<earfcn>"),
                rsrp_dbm=f.opt_float(4, "<RSRP>", scale=0.1), rsrq_db=f.opt_float(5, "<RSRQ>", scale=0.1),
                sinr_db=f.opt_float(6, "<SINR>", scale=0.1))


def parse_cpsi(lines: Sequence[str], command: str = "AT+CPSI?") -> ServingCell:
    rows = [Fields(command, line, payload, CPSI_SYNTAX) for line, payload in payloads(command, lines, "+CPSI:")]
    if not rows:
        raise ModemResponseError(f"{command} answered without a +CPSI line (got {list(lines)[:4]!r}); "
                                 f"expected {CPSI_SYNTAX}", command=command, lines=tuple(lines))
    cells: list[Cell] = []
    state = ""
    mode = RadioMode.NO_SERVICE
    for row in rows:
        system = row.text(0, "<System Mode>")
        if system == "NO SERVICE":
            state = row.text(1, "<Operation Mode>")
        elif system == "LTE":
            state = row.text(1, "<Operation Mode>")
            cells.append(_lte(row))
            mode = RadioMode.LTE if mode is RadioMode.NO_SERVICE else mode
        elif system == "NR5G_SA":
            state = row.text(1, "<Operation Mode>")
            cells.append(_nr_sa(row))
            mode = RadioMode.NR5G_SA
        elif system == "NR5G_NSA":
            cells.append(_nr_nsa(row))
            mode = RadioMode.NR5G_NSA
        else:
            raise row.fail(f"<System Mode> {system!r} is not one this driver reports (LTE, NR5G_SA, NR5G_NSA)")
    if mode is RadioMode.NR5G_NSA:
        cells.sort(key=lambda c: c.rat is not RadioMode.LTE)  # LTE anchor first
        if not state:
            state = "Online"
    return ServingCell(mode, state, tuple(cells))


_CGPSINFO_SYNTAX = ("+CGPSINFO: [<lat>],[<N/S>],[<log>],[<E/W>],[<date>],[<UTC time>],[<alt>],[<speed>],[<course>] "
                    "(SIMCom SIM7600 AT Command Manual, AT+CGPSINFO)")


def _dm(f: Fields, i: int, hemi: str, degrees_width: int, name: str, limit: float) -> float:
    text = f.text(i, name)
    m = re.fullmatch(r"(\d{%d})(\d{2}\.\d+)" % degrees_width, text)
    if m is None:
        raise f.fail(f"{name} {text!r} is not {'d' * degrees_width}mm.mmmmmm")
    minutes = float(m.group(2))
    if minutes >= 60:
        raise f.fail(f"{name} {text!r} has {minutes} minutes")
    value = int(m.group(1)) + minutes / 60
    if value > limit:
        raise f.fail(f"{name} {text!r} is beyond {limit}°")
    sign = f.text(i + 1, "hemisphere")
    if sign not in hemi:
        raise f.fail(f"hemisphere {sign!r} is not {' or '.join(hemi)}")
    return -value if sign == hemi[1] else value


def parse_cgpsinfo(lines: Sequence[str], command: str = "AT+CGPSINFO") -> GnssFix | None:
    """The fix, or None when every field is empty (no fix yet, or GPS off)."""
    f = single(command, lines, "+CGPSINFO:", _CGPSINFO_SYNTAX)
    if all(v == "" for v in f.values):
        return None
    f.need(9)
    date, utc = f.text(4, "<date>"), f.text(5, "<UTC time>")
    try:
        day = dt.datetime.strptime(date, "%d%m%y")
        hms = dt.datetime.strptime(utc.split(".")[0], "%H%M%S")
    except ValueError:
        raise f.fail(f"<date> {date!r} / <UTC time> {utc!r} are not ddmmyy / hhmmss.s") from None
    frac = utc.split(".")[1] if "." in utc else ""
    micro = int((frac + "000000")[:6]) if frac.isdigit() else 0
    when = day.replace(hour=hms.hour, minute=hms.minute, second=hms.second, microsecond=micro,
                       tzinfo=dt.timezone.utc)
    knots = f.opt_float(7, "<speed>")
    return GnssFix(
        time=when, latitude=_dm(f, 0, "NS", 2, "<lat>", 90.0), longitude=_dm(f, 2, "EW", 3, "<log>", 180.0),
        altitude_m=f.opt_float(6, "<alt>"), speed_kmh=None if knots is None else knots * 1.852,
        course_deg=f.opt_float(8, "<course>"), hdop=None, satellites=None, fix_dimension=None,
    )


class SimcomModem(Modem):
    """SIMCom SIM7600 / SIM8200."""

    family = "simcom"

    async def iccid(self) -> str:
        return parse_iccid(await self._lines("AT+CICCID", "+ICCID:"), "AT+CICCID")

    async def serving_cell(self) -> ServingCell:
        return parse_cpsi(await self._lines("AT+CPSI?", "+CPSI:"))

    async def gnss_start(self) -> None:
        """AT+CGPS=1; an already running session (which SIMCom answers with ERROR) counts as started."""
        try:
            await self.channel.command("AT+CGPS=1")
        except AtResultError:
            lines = await self._lines("AT+CGPS?", "+CGPS:")
            if not any(line.replace(" ", "").startswith("+CGPS:1") for line in lines):
                raise

    async def gnss_stop(self) -> None:
        try:
            await self.channel.command("AT+CGPS=0")
        except AtResultError:
            pass  # already off

    async def gnss_location(self) -> GnssFix | None:
        return parse_cgpsinfo(await self._lines("AT+CGPSINFO", "+CGPSINFO:"))
