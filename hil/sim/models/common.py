"""The 3GPP TS 27.007 part every simulated modem shares: answers and handlers.

Models compose these with their vendor's tables (``quectel.py``,
``simcom.py``). Response formats follow TS 27.007: +CSQ §8.5, +CESQ §8.69,
+CEREG §10.1.22, +C5GREG, +COPS §7.3, +CCLK §8.15, +CFUN §8.2.
"""
from __future__ import annotations

from hil.sim.model import CommandContext, Reply, SimState, error, require


def _imsi(s: SimState) -> tuple[str, ...]:
    require(s.sim_present, 10)
    return (s.imsi,)


def _cpin(s: SimState) -> tuple[str, ...]:
    require(s.sim_present, 10)
    return ("+CPIN: READY",)


def _registration(name: str, n: int, stat: int, tac: str, ci: str, act: int) -> str:
    # Read form: <n>,<stat>[,<tac>,<ci>,<AcT>]; location only with n >= 2 while registered.
    if n >= 2 and stat in (1, 5):
        return f'{name}: {n},{stat},"{tac}","{ci}",{act}'
    return f"{name}: {n},{stat}"


def _cereg(s: SimState) -> tuple[str, ...]:
    act = 13 if s.rat == "NR5G-NSA" else 7
    return (_registration("+CEREG", s.cereg_n, s.eps_stat, f"{s.tac & 0xFFFF:04X}", f"{s.cell_id & 0xFFFFFFF:08X}",
                          act),)


def _c5greg(s: SimState) -> tuple[str, ...]:
    return (_registration("+C5GREG", s.c5greg_n, s.nr_stat, f"{s.nr_tac:06X}", f"{s.nr_cell_id:09X}", 11),)


def _cops(s: SimState) -> tuple[str, ...]:
    if not s.in_service:
        return ("+COPS: 0",)
    name = {0: s.operator_long, 1: s.operator_short, 2: f"{s.mcc}{s.mnc}"}[s.cops_format]
    act = {"LTE": 7, "NR5G-NSA": 13, "NR5G-SA": 11}.get(s.rat, 7)
    return (f'+COPS: 0,{s.cops_format},"{name}",{act}',)


ANSWERS = {
    "AT": (),
    "AT+CGMI": ("{model.manufacturer}",),
    "AT+CGMM": ("{model.model}",),
    "AT+CGMR": ("{model.revision}",),
    "AT+GMM": ("{model.model}",),
    "AT+CGSN": ("{imei}",),
    "AT+GSN": ("{imei}",),
    "AT+CGSN=1": ('+CGSN: "{imei}"',),
    "AT+CIMI": _imsi,
    "AT+CPIN?": _cpin,
    "AT+CSQ": ("+CSQ: {csq},99",),
    "AT+CESQ": ("+CESQ: 99,99,255,255,{cesq_rsrq},{cesq_rsrp}",),
    "AT+CREG?": ("+CREG: {creg_n},{eps_stat}",),
    "AT+CEREG?": _cereg,
    "AT+COPS?": _cops,
    "AT+CCLK?": ('+CCLK: "{cclk}"',),
    "AT+CFUN?": ("+CFUN: {cfun}",),
    "AT+CMEE?": ("+CMEE: {cmee}",),
}


#: Only 5G modems know +C5GREG; LTE-only models (EC25, SIM7600) answer ERROR, as the real ones do.
NR5G_ANSWERS = {"AT+C5GREG?": _c5greg}


def _ati(ctx: CommandContext) -> Reply:
    view = ctx.state.view()
    view["model"] = ctx.sim.model
    return Reply(tuple(line.format_map(view) for line in ctx.sim.model.ati))


def _echo(ctx: CommandContext) -> Reply:
    ctx.state.echo = ctx.match.group(1) == "1"
    return Reply()


def _cmee(ctx: CommandContext) -> Reply:
    ctx.state.cmee = int(ctx.match.group(1))
    return Reply()


def _reg_mode(ctx: CommandContext) -> Reply:
    n = int(ctx.match.group(2))
    name = ctx.match.group(1).upper()
    if n > 5:
        return error(50)
    if name == "C5GREG" and "AT+C5GREG?" not in ctx.sim.model.answers:
        return error()
    setattr(ctx.state, {"CREG": "creg_n", "CEREG": "cereg_n", "C5GREG": "c5greg_n"}[name], n)
    return Reply()


def _cops_format(ctx: CommandContext) -> Reply:
    ctx.state.cops_format = int(ctx.match.group(1))
    return Reply()


def _cfun(ctx: CommandContext) -> Reply:
    fun, rst = int(ctx.match.group(1)), ctx.match.group(2)
    if fun not in (0, 1, 4) or rst not in (None, "0", "1"):
        return error(50)
    if rst == "1":
        # TS 27.007 §8.2: reset the MT before setting <fun>. The OK goes out first; the USB port
        # drops a moment later.
        return Reply(action=lambda sim: sim.reboot(after_s=0.02))
    if fun == ctx.state.cfun:
        return Reply()
    return Reply(action=lambda sim: sim.changing_registration(lambda: setattr(ctx.state, "cfun", fun)))


HANDLERS = (
    (r"ATI0?", _ati),
    (r"ATE([01]?)", _echo),
    (r"AT\+CMEE=([012])", _cmee),
    (r"AT\+(CREG|CEREG|C5GREG)=(\d)", _reg_mode),
    (r"AT\+COPS=3,([012])", _cops_format),
    (r"AT\+CFUN=(\d+)(?:,(\d+))?", _cfun),
)

SIGNAL_COMMANDS = frozenset({"AT+CSQ", "AT+CESQ"})
