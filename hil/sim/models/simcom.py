"""SIMCom pieces shared by the simulated SIM7600 and SIM8200.

Formats from SIM7500_SIM7600 Series AT Command Manual ("AT+CPSI Inquiring UE
system information", "AT+CICCID Read ICCID from SIM card", "AT+CGPS Start/stop
GPS session", "AT+CGPSINFO Get GPS fixed position information") and the
SIM8200 Series (SIM82XX_SIM83XX) AT Command Manual for the NR5G forms of
AT+CPSI.
"""
from __future__ import annotations

from hil.sim.model import CommandContext, Reply, SimState, error, require

BOOT_URCS = ("RDY", "+CPIN: READY", "SMS DONE", "PB DONE")
SIM_SWAP_URCS = ("+SIMCARD: NOT AVAILABLE", "+CPIN: READY", "SMS DONE")
SIGNAL_COMMANDS = frozenset({"AT+CPSI?"})


def _t(x: float) -> int:
    return int(round(x * 10))


def _ciccid(s: SimState) -> tuple[str, ...]:
    require(s.sim_present, 10)
    return (f"+ICCID: {s.iccid}",)


def _lte_line(s: SimState) -> str:
    # <System Mode>,<Operation Mode>,<MCC>-<MNC>,<TAC>,<SCellID>,<PCellID>,<Frequency Band>,<earfcn>,
    # <dlbw>,<ulbw>,<RSRQ>,<RSRP>,<RSSI>,<RSSNR>; RSRQ/RSRP/RSSI in tenths of dB(m).
    return (f"+CPSI: LTE,Online,{s.mcc}-{s.mnc},0x{s.tac & 0xFFFF:04X},{s.cell_id},{s.pci},EUTRAN-BAND{s.band},"
            f"{s.earfcn},5,5,{_t(s.rsrq)},{_t(s.rsrp)},{_t(s.rssi)},{int(round(s.sinr))}")


def cpsi(s: SimState) -> tuple[str, ...]:
    if s.cfun != 1:
        return ("+CPSI: NO SERVICE,Low Power Mode",)
    if not s.in_service:
        return ("+CPSI: NO SERVICE,Online",)
    if s.rat == "NR5G-SA":
        return (f"+CPSI: NR5G_SA,Online,{s.mcc}-{s.mnc},0x{s.nr_tac:06X},{s.nr_cell_id},{s.nr_pci},"
                f"NR5G_BAND{s.nr_band},{s.nr_arfcn},{_t(s.nr_rsrp)},{_t(s.nr_rsrq)},{_t(s.nr_sinr)}",)
    if s.rat == "NR5G-NSA":
        return (_lte_line(s),
                f"+CPSI: NR5G_NSA,{s.nr_pci},NR5G_BAND{s.nr_band},{s.nr_arfcn},"
                f"{_t(s.nr_rsrp)},{_t(s.nr_rsrq)},{_t(s.nr_sinr)}")
    return (_lte_line(s),)


def _cgps(ctx: CommandContext) -> Reply:
    on = ctx.match.group(1) == "1"
    if on == ctx.state.gnss_on:
        return error()
    ctx.state.gnss_on = on
    return Reply()


def _dm(value: float, width: int) -> str:
    a = abs(value)
    deg = int(a)
    return f"{deg:0{width}d}{(a - deg) * 60:09.6f}"


def cgpsinfo(s: SimState) -> tuple[str, ...]:
    f = s.fix
    if not s.gnss_on or f is None:
        return ("+CGPSINFO: ,,,,,,,,",)
    now = s.now()
    return (f"+CGPSINFO: {_dm(f.latitude, 2)},{'N' if f.latitude >= 0 else 'S'},"
            f"{_dm(f.longitude, 3)},{'E' if f.longitude >= 0 else 'W'},{now:%d%m%y},{now:%H%M%S}.0,"
            f"{f.altitude_m:.1f},{f.speed_kmh / 1.852:.1f},{f.course_deg:.1f}",)


ANSWERS = {
    "AT+CICCID": _ciccid,
    "AT+CPSI?": cpsi,
    "AT+CGPS?": ("+CGPS: {gnss_on:d},1",),
    "AT+CGPSINFO": cgpsinfo,
}

HANDLERS = (
    (r"AT\+CGPS=([01])(?:,\d)?", _cgps),
)
