"""SIMCom SIM7080G (LTE Cat-M / NB-IoT), simulated: the CA* UDP application commands, the bearer, PSM.

Formats from the SIM7070_SIM7080_SIM7090 Series AT Command Manual and its
TCP/IP Application Note (§5.1.1):

* AT+CMNB=<mode> (1 Cat-M, 2 NB-IoT, 3 both); AT+CNCFG=<pdpidx>,<ip_type>,<apn>.
* AT+CNACT=<pdpidx>,<action> answers OK, then +APP PDP: <pdpidx>,ACTIVE (or
  DEACTIVE); AT+CNACT? lists +CNACT: <pdpidx>,<status>,"<address>" for 0..3.
* AT+CAOPEN=<cid>,<pdpidx>,"UDP",<host>,<port> answers +CAOPEN: <cid>,<result>
  and OK (result 0 = opened; 1 socket in use, 3 bearer not active, 4 DNS).
* AT+CASEND=<cid>,<length> (§12.2.5) answers the prompt "> ", takes exactly
  <length> raw bytes, then OK.
* A datagram arriving is announced by +CADATAIND: <cid>; AT+CARECV=<cid>,<max>
  (§12.2.6) answers +CARECV: <length>,<raw bytes> (or +CARECV: 0), then OK.
* AT+CACLOSE=<cid>.
* AT+CPSMS (TS 27.007 §7.38) and AT+CPSMSTATUS=1: +CPSMSTATUS: "ENTER PSM" /
  "EXIT PSM" (hil.sim.models.nbiot).
* AT+CNMPSD (TS 27.007 §10.1.41, no more PS data): the network releases the
  radio connection at once (AT+CASEND has no Release Assistance flag).

Sockets are real UDP sockets on 127.0.0.1 (hil.sim.models.nbiot).
"""
from __future__ import annotations

from hil.sim.model import (
    CommandContext,
    DataPrompt,
    ModemModel,
    Reply,
    SimState,
    SimulatedModem,
    error,
)
from hil.sim.models import common, nbiot

MAX_CID = 12
CONTEXTS = 4
ADDRESS = "10.185.48.73"


def _cnact_read(state: SimState) -> tuple[str, ...]:
    active = state.extra.get("pdp", set())
    return tuple(f'+CNACT: {i},{1 if i in active else 0},"{ADDRESS if i in active else "0.0.0.0"}"'  # type: ignore[operator]
                 for i in range(CONTEXTS))


def _cnact(ctx: CommandContext) -> Reply:
    index, action = int(ctx.match.group(1)), int(ctx.match.group(2))
    if not 0 <= index < CONTEXTS or action not in (0, 1):
        return error(50)
    active: set[int] = ctx.state.extra.setdefault("pdp", set())  # type: ignore[assignment]
    if action == 1:
        if not ctx.state.in_service:
            return Reply(after=(f"+APP PDP: {index},DEACTIVE",))
        active.add(index)
        return Reply(after=(f"+APP PDP: {index},ACTIVE",))
    active.discard(index)
    return Reply(after=(f"+APP PDP: {index},DEACTIVE",))


def _arrived(sim: SimulatedModem, entry: nbiot.SimSocket, data: bytes, address: tuple[str, int]) -> None:
    entry.inbox.append((data, address))
    sim.emit_urc(f"+CADATAIND: {entry.sid}")


def _caopen(ctx: CommandContext) -> Reply:
    cid, pdp, kind = int(ctx.match.group(1)), int(ctx.match.group(2)), ctx.match.group(3)
    if not 0 <= cid <= MAX_CID or kind != "UDP":
        return error(50)
    if cid in nbiot.sockets(ctx.state):
        return Reply((f"+CAOPEN: {cid},1",))
    if pdp not in ctx.state.extra.get("pdp", set()):  # type: ignore[operator]
        return Reply((f"+CAOPEN: {cid},3",))
    peer = nbiot.resolve(ctx.match.group(4), int(ctx.match.group(5)))
    if peer is None:
        return Reply((f"+CAOPEN: {cid},4",))
    nbiot.open_socket(ctx, cid, peer, _arrived)
    return Reply((f"+CAOPEN: {cid},0",))


def _casend(ctx: CommandContext) -> Reply:
    cid, length = int(ctx.match.group(1)), int(ctx.match.group(2))
    entry = nbiot.sockets(ctx.state).get(cid)
    if entry is None or entry.peer is None or not 0 < length <= 1459:
        return error()

    def sent(data: bytes) -> Reply:
        busy = nbiot.busy(ctx)
        if busy is not None:
            return busy
        nbiot.send_datagram(ctx, entry, data, entry.peer)  # type: ignore[arg-type]
        return Reply()
    return Reply(prompt=DataPrompt(sent, length))


def _carecv(ctx: CommandContext) -> Reply:
    cid, most = int(ctx.match.group(1)), int(ctx.match.group(2))
    entry = nbiot.sockets(ctx.state).get(cid)
    if entry is None or not 1 <= most <= 1460:
        return error()
    if not entry.inbox:
        return Reply(("+CARECV: 0",))
    data, _ = entry.inbox.pop(0)
    data = data[:most]
    # Raw bytes, not hex: they may hold CR LF, so the host must count them.
    return nbiot.raw_answer(b"\r\n+CARECV: %d," % len(data) + data + b"\r\n\r\nOK\r\n")


def _caclose(ctx: CommandContext) -> Reply:
    return Reply() if nbiot.close_socket(ctx, int(ctx.match.group(1))) else error()


def _cpsmstatus(ctx: CommandContext) -> Reply:
    ctx.state.extra["psm_urcs"] = ctx.match.group(1) == "1"
    return Reply()


MODEL = ModemModel(
    key="sim7080g",
    manufacturer="SIMCOM_Ltd",
    model="SIMCOM_SIM7080G",
    revision="1951B16SIM7080",
    ati=("Manufacturer: SIMCOM INCORPORATED", "Model: SIMCOM_SIM7080G", "Revision: 1951B16SIM7080",
         "IMEI: {imei}"),
    answers={
        **{k: v for k, v in common.ANSWERS.items() if k != "AT"},  # AT is a handler: it wakes the modem from PSM
        "AT+CNACT?": _cnact_read,
        "AT+CPSMS?": nbiot.psm_read,
        "AT+CMNB?": lambda s: (f"+CMNB: {s.extra.get('cmnb', '3')}",),
        "AT+CPSMSTATUS?": lambda s: (f"+CPSMSTATUS: {int(bool(s.extra.get('psm_urcs')))}",),
        "AT+CSCON?": nbiot.cscon,
    },
    handlers=(
        (r"AT", nbiot.at),
        (r"AT\+CMNB=([123])", nbiot.setting("cmnb", ("1", "2", "3"))),
        (r'AT\+CNCFG=(\d),(\d)(?:,"([^"]*)".*)?', lambda ctx: Reply()),
        (r"AT\+CNACT=(\d),(\d)", _cnact),
        (r'AT\+CPSMS=(\d)(?:,,,"([01]{8})","([01]{8})")?', nbiot.psm_settings),
        (r"AT\+CPSMSTATUS=([01])", _cpsmstatus),
        (r"AT\+CEDRXS=(\d)(?:,.*)?", nbiot.setting("edrx", ("0", "1", "2", "3"))),
        (r'AT\+CAOPEN=(\d+),(\d+),"(TCP|UDP)","([^"]+)",(\d+)(?:,\d+)?', _caopen),
        (r"AT\+CASEND=(\d+),(\d+)(?:,\d+)?", _casend),
        (r"AT\+CARECV=(\d+),(\d+)", _carecv),
        (r"AT\+CACLOSE=(\d+)", _caclose),
        (r"AT\+CNMPSD", nbiot.no_more_data),
    ) + common.HANDLERS,
    boot_urcs=("RDY", "+CFUN: 1", "+CPIN: READY", "SMS Ready"),
    initial_state={"rat": "LTE", "band": 8, "earfcn": 3740, "mcc": "262", "mnc": "02", "operator_long": "Vodafone.de",
                   "operator_short": "Vodafone", "imsi": "262021234500002", "iccid": "89490240001234500029",
                   "imei": "869951030012345"},
)
