"""Quectel pieces shared by the simulated RM500Q, RM520N and EC25.

Formats from the Quectel AT manuals: RG50xQ&RM5xxQ Series AT Commands Manual
and RG520N&RM520N Series AT Commands Manual ("AT+QENG Switch on/off
Engineering Mode", "AT+QNWINFO Query Network Information"), EC25&EC21 AT
Commands Manual, and the EC25&EC21 GNSS AT Commands Manual ("AT+QGPS",
"AT+QGPSLOC", "Summary of Error Codes": 504 session is ongoing, 505 session
not active, 516 not fixed now).
"""
from __future__ import annotations

from hil.sim.model import CommandContext, Reply, SimState, error, require

BOOT_URCS = ("RDY", "+CFUN: 1", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE")
SIM_SWAP_URCS = ("+CPIN: NOT READY", "+QUSIM: 1", "+CPIN: READY", "+QIND: SMS DONE")
SIGNAL_COMMANDS = frozenset({'AT+QENG="SERVINGCELL"'})


def _r(x: float) -> int:
    return int(round(x))


def _qccid(s: SimState) -> tuple[str, ...]:
    require(s.sim_present, 10)
    return (f"+QCCID: {s.iccid}",)


def _lte_fields(s: SimState, *, extended: bool) -> str:
    # <is_tdd>,<MCC>,<MNC>,<cellID>,<PCID>,<earfcn>,<freq_band_ind>,<UL_bandwidth>,<DL_bandwidth>,
    # <TAC>,<RSRP>,<RSRQ>,<RSSI>,<SINR>[,<CQI>,<tx_power>],<srxlev>
    head = (f'"FDD",{s.mcc},{s.mnc},{s.cell_id:X},{s.pci},{s.earfcn},{s.band},5,5,{s.tac:X},'
            f"{_r(s.rsrp)},{_r(s.rsrq)},{_r(s.rssi)},{_r(s.sinr)}")
    return head + (",9,-32768,40" if extended else ",40")


def qeng_rm5xx(s: SimState) -> tuple[str, ...]:
    """AT+QENG="servingcell" as the RM500Q/RM520N answer it, for each RAT."""
    if not s.in_service:
        return ('+QENG: "servingcell","SEARCH"',)
    conn = "CONNECT" if s.connected else "NOCONN"
    if s.rat == "NR5G-SA":
        return (f'+QENG: "servingcell","{conn}","NR5G-SA","TDD",{s.mcc},{s.mnc},{s.nr_cell_id:X},{s.nr_pci},'
                f"{s.nr_tac:X},{s.nr_arfcn},{s.nr_band},12,{_r(s.nr_rsrp)},{_r(s.nr_rsrq)},{_r(s.nr_sinr)},1,40",)
    if s.rat == "NR5G-NSA":
        return (f'+QENG: "servingcell","{conn}"',
                '+QENG: "LTE",' + _lte_fields(s, extended=True),
                f'+QENG: "NR5G-NSA",{s.mcc},{s.mnc},{s.nr_pci},{_r(s.nr_rsrp)},{_r(s.nr_sinr)},{_r(s.nr_rsrq)},'
                f"{s.nr_arfcn},{s.nr_band},12,1")
    return (f'+QENG: "servingcell","{conn}","LTE",' + _lte_fields(s, extended=True),)


def qeng_ec25(s: SimState) -> tuple[str, ...]:
    """AT+QENG="servingcell" as the EC25 answers it: LTE only, no <CQI>/<tx_power>."""
    if not s.in_service:
        return ('+QENG: "servingcell","SEARCH"',)
    conn = "CONNECT" if s.connected else "NOCONN"
    return (f'+QENG: "servingcell","{conn}","LTE",' + _lte_fields(s, extended=False),)


def qnwinfo(s: SimState) -> tuple[str, ...]:
    if not s.in_service:
        return ("+QNWINFO: No Service",)
    if s.rat == "NR5G-SA":
        return (f'+QNWINFO: "TDD NR5G","{s.mcc}{s.mnc}","NR5G BAND {s.nr_band}",{s.nr_arfcn}',)
    return (f'+QNWINFO: "FDD LTE","{s.mcc}{s.mnc}","LTE BAND {s.band}",{s.earfcn}',)


def _qgps_on(ctx: CommandContext) -> Reply:
    if ctx.match.group(1) != "1":
        return error(501)
    if ctx.state.gnss_on:
        return error(504)  # session is ongoing
    ctx.state.gnss_on = True
    return Reply()


def _qgps_end(ctx: CommandContext) -> Reply:
    if not ctx.state.gnss_on:
        return error(505)  # session not active
    ctx.state.gnss_on = False
    return Reply()


def _degrees_minutes(value: float, width: int) -> tuple[str, float]:
    a = abs(value)
    deg = int(a)
    return f"{deg:0{width}d}", (a - deg) * 60


def _qgpsloc(ctx: CommandContext) -> Reply:
    s = ctx.state
    require(s.gnss_on, 505)
    require(s.fix is not None, 516)
    f = s.fix
    assert f is not None
    mode = int(ctx.match.group(1) or 0)
    now = s.now()
    if mode == 2:
        lat, lon = f"{f.latitude:.5f}", f"{f.longitude:.5f}"
    else:
        dlat, mlat = _degrees_minutes(f.latitude, 2)
        dlon, mlon = _degrees_minutes(f.longitude, 3)
        ns, ew = ("N" if f.latitude >= 0 else "S"), ("E" if f.longitude >= 0 else "W")
        if mode == 0:
            lat, lon = f"{dlat}{mlat:07.4f}{ns}", f"{dlon}{mlon:07.4f}{ew}"
        else:
            lat, lon = f"{dlat}{mlat:09.6f},{ns}", f"{dlon}{mlon:09.6f},{ew}"
    line = (f"+QGPSLOC: {now:%H%M%S}.000,{lat},{lon},{f.hdop:.1f},{f.altitude_m:.1f},{f.fix_dimension},"
            f"{f.course_deg:.2f},{f.speed_kmh:.1f},{f.speed_kmh / 1.852:.1f},{now:%d%m%y},{f.satellites:02d}")
    return Reply((line,))


ANSWERS = {
    "AT+QCCID": _qccid,
    "AT+QNWINFO": qnwinfo,
    "AT+QGPS?": ("+QGPS: {gnss_on:d}",),
}

HANDLERS = (
    (r"AT\+QGPS=(\d)(?:,.*)?", _qgps_on),
    (r"AT\+QGPSEND", _qgps_end),
    (r"AT\+QGPSLOC(?:=([0-2]))?", _qgpsloc),
)
