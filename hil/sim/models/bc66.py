"""Quectel BC66 (NB-IoT, QI* socket firmware) and BC95 (NB-IoT, NSO* socket firmware), simulated.

The two share the family's sleep and network commands and differ in the UDP
socket API, as the real modules' firmware does:

* "bc66": Quectel BC66 TCP/IP Application Note — AT+QICFG="dataformat",<send>,<recv>
  (1 = hex), AT+QIOPEN=<contextID>,<connectID>,"UDP",<host>,<port>[,<local port>[,<access mode>]]
  answering OK then +QIOPEN: <connectID>,<err>; AT+QISEND=<connectID>,<length>,<data>
  answering OK then SEND OK; received data pushed as
  +QIURC: "recv",<connectID>,<length>,"<hex>" (access mode 1, direct push) or
  announced as +QIURC: "recv",<connectID> and read with AT+QIRD=<connectID>,<max>
  (+QIRD: <length>, then the data line); AT+QICLOSE=<connectID>. AT+QSCLK=<n> sleep mode.
* "bc95": Quectel BC95 AT Commands Manual — AT+NSOCR=DGRAM,17,<port>[,<receive>]
  answering the socket number; AT+NSOST=<s>,<ip>,<port>,<length>,<hex> answering
  <s>,<length>; +NSONMI:<s>,<length>; AT+NSORF=<s>,<max> answering
  <s>,<ip>,<port>,<length>,<hex>,<remaining>; AT+NSOCL=<s>. No AT+QSCLK (ERROR).

Both: AT+CPSMS (TS 27.007 §7.38), AT+CEDRXS (§7.40), AT+CSCON? (§10.1.30), and
+CME ERROR: 159 (uplink busy) on a send when the link's busy_sends knob is set.
Sockets are real UDP sockets on 127.0.0.1 (hil.sim.models.nbiot).

Release Assistance (the radio connection is modelled in hil.sim.models.nbiot):
"bc66" takes AT+QNBIOTRAI=<rai> (BC66 AT Commands Manual: 0 no information,
1 one uplink packet and no downlink expected, 2 one uplink and one downlink
packet expected), which applies to every send until changed; "bc95" takes
AT+NSOSTF=<s>,<ip>,<port>,<flag>,<length>,<hex> (BC95 AT Commands Manual:
flag 0x200 release after this message, 0x400 release after its reply) and
AT+CNMPSD (TS 27.007 §10.1.41).
"""
from __future__ import annotations

import binascii

from hil.sim.model import CommandContext, ModemModel, Reply, SimulatedModem, error
from hil.sim.models import common, nbiot

MAX_SOCKETS = 5
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _unhex(text: str) -> bytes | None:
    text = text.strip('"')
    if len(text) % 2 or set(text) - HEX_DIGITS:
        return None
    return binascii.unhexlify(text)


# --- QI* (BC66 firmware) ---------------------------------------------------------------

def _qicfg_dataformat(ctx: CommandContext) -> Reply:
    send, receive = ctx.match.group(1), ctx.match.group(2)
    if send not in ("0", "1") or receive not in ("0", "1"):
        return error(50)
    ctx.state.extra["hex_send"], ctx.state.extra["hex_receive"] = send == "1", receive == "1"
    return Reply()


def _qi_arrived(sim: SimulatedModem, entry: nbiot.SimSocket, data: bytes, address: tuple[str, int]) -> None:
    hex_receive = bool(sim.state.extra.get("hex_receive"))
    if entry.options.get("access_mode") == 1:
        body = data.hex().upper() if hex_receive else data.decode("latin-1")
        sim.emit_urc(f'+QIURC: "recv",{entry.sid},{len(data)},"{body}"')
    else:
        entry.inbox.append((data, address))
        sim.emit_urc(f'+QIURC: "recv",{entry.sid}')


def _qiopen(ctx: CommandContext) -> Reply:
    m = ctx.match
    context, connect_id, service = int(m.group(1)), int(m.group(2)), m.group(3)
    access_mode = int(m.group(7) or 0)
    if not 1 <= context <= 3 or not 0 <= connect_id < MAX_SOCKETS or access_mode not in (0, 1):
        return error(50)
    if service != "UDP":
        return error(50)  # this simulation offers UDP only
    if connect_id in nbiot.sockets(ctx.state):
        return Reply(after=(f"+QIOPEN: {connect_id},563",))  # socket identity has been used
    peer = nbiot.resolve(m.group(4), int(m.group(5)))
    if peer is None or not ctx.state.in_service:
        return Reply(after=(f"+QIOPEN: {connect_id},565",))  # DNS parse failed / network down
    nbiot.open_socket(ctx, connect_id, peer, _qi_arrived, access_mode=access_mode)
    return Reply(after=(f"+QIOPEN: {connect_id},0",))


def _qisend(ctx: CommandContext) -> Reply:
    connect_id, length, data_text = int(ctx.match.group(1)), int(ctx.match.group(2)), ctx.match.group(3)
    entry = nbiot.sockets(ctx.state).get(connect_id)
    if entry is None or entry.peer is None:
        return error()
    if ctx.state.extra.get("hex_send"):
        data = _unhex(data_text)
    else:
        data = data_text.strip('"').encode("latin-1")
    if data is None or len(data) != length or not 0 < length <= 1024:
        return error(50)
    busy = nbiot.busy(ctx)
    if busy is not None:
        return busy
    rai = ctx.state.extra.get("qnbiotrai", "0")
    nbiot.send_datagram(ctx, entry, data, entry.peer, {"1": "uplink", "2": "downlink"}.get(str(rai)))
    return Reply(after=("SEND OK",))


def _qird(ctx: CommandContext) -> Reply:
    connect_id, most = int(ctx.match.group(1)), int(ctx.match.group(2))
    entry = nbiot.sockets(ctx.state).get(connect_id)
    if entry is None:
        return error()
    if not entry.inbox:
        return Reply(("+QIRD: 0",))
    data, _ = entry.inbox.pop(0)
    data = data[:most]
    body = data.hex().upper() if ctx.state.extra.get("hex_receive") else data.decode("latin-1")
    return Reply((f"+QIRD: {len(data)}", body))


def _qiclose(ctx: CommandContext) -> Reply:
    return Reply() if nbiot.close_socket(ctx, int(ctx.match.group(1))) else error()


# --- NSO* (BC95 firmware) ---------------------------------------------------------------

def _nso_arrived(sim: SimulatedModem, entry: nbiot.SimSocket, data: bytes, address: tuple[str, int]) -> None:
    entry.inbox.append((data, address))
    if entry.options.get("receive", True):
        sim.emit_urc(f"+NSONMI:{entry.sid},{len(data)}")


def _nsocr(ctx: CommandContext) -> Reply:
    kind, protocol, port, receive = ctx.match.group(1), ctx.match.group(2), int(ctx.match.group(3)), ctx.match.group(4)
    if kind != "DGRAM" or protocol != "17" or not 0 <= port <= 65535 or port == 5683:
        return error()
    taken = nbiot.sockets(ctx.state)
    free = [sid for sid in range(MAX_SOCKETS) if sid not in taken]
    if not free:
        return error()
    entry = nbiot.open_socket(ctx, free[0], None, _nso_arrived, receive=receive != "0")
    return Reply((str(entry.sid),))


NSO_RELEASE = {0x200: "uplink", 0x400: "downlink"}  # AT+NSOSTF <flag>: release after this message / its reply


def _nsostf(ctx: CommandContext) -> Reply:
    """AT+NSOSTF: AT+NSOST with a <flag> (0x100 exception data, 0x200 / 0x400 Release Assistance)."""
    try:
        flag = int(ctx.match.group(4), 0)
    except ValueError:
        return error()
    if flag not in (0, 0x100, 0x200, 0x400):
        return error()
    return _nsost(ctx, (ctx.match.group(1), ctx.match.group(2), ctx.match.group(3), ctx.match.group(5),
                        ctx.match.group(6)), NSO_RELEASE.get(flag))


def _nsost(ctx: CommandContext, groups: tuple[str, ...] | None = None, release: nbiot.Release | None = None) -> Reply:
    sid_text, host, port_text, length_text, data_text = groups or ctx.match.groups()
    sid, port, length, data = int(sid_text), int(port_text), int(length_text), _unhex(data_text)
    entry = nbiot.sockets(ctx.state).get(sid)
    if entry is None or data is None or len(data) != length or not 0 < length <= 512:
        return error()
    if not all(part.isdigit() for part in host.split(".")) or host.count(".") != 3:
        return error()  # NSOST takes an IPv4 address, not a name
    busy = nbiot.busy(ctx)
    if busy is not None:
        return busy
    nbiot.send_datagram(ctx, entry, data, (host, port), release)
    return Reply((f"{sid},{length}",))


def _nsorf(ctx: CommandContext) -> Reply:
    sid, most = int(ctx.match.group(1)), int(ctx.match.group(2))
    entry = nbiot.sockets(ctx.state).get(sid)
    if entry is None:
        return error()
    if not entry.inbox:
        return Reply()
    data, (host, port) = entry.inbox.pop(0)
    part, rest = data[:most], data[most:]
    if rest:
        entry.inbox.insert(0, (rest, (host, port)))
    return Reply((f"{sid},{host},{port},{len(part)},{part.hex().upper()},{len(rest)}",))


def _nsocl(ctx: CommandContext) -> Reply:
    return Reply() if nbiot.close_socket(ctx, int(ctx.match.group(1))) else error()


# --- the models -----------------------------------------------------------------------------

_FAMILY_ANSWERS = {
    **{k: v for k, v in common.ANSWERS.items() if k != "AT"},  # AT is a handler: it wakes the modem from PSM
    "AT+CSCON?": nbiot.cscon,
    "AT+CPSMS?": nbiot.psm_read,
    "AT+CEDRXS?": ("+CEDRXS: 5,\"0010\"",),
}

_FAMILY_HANDLERS = (
    (r"AT", nbiot.at),
    (r"AT\+CSCON=([01])", nbiot.setting("cscon", ("0", "1"))),
    (r'AT\+CPSMS=(\d)(?:,,,"([01]{8})","([01]{8})")?', nbiot.psm_settings),
    (r"AT\+CEDRXS=(\d)(?:,.*)?", nbiot.setting("edrx", ("0", "1", "2", "3"))),
) + common.HANDLERS

_NBIOT_STATE = {"rat": "LTE", "band": 20, "earfcn": 6300, "mcc": "262", "mnc": "01",
                "operator_long": "Telekom.de", "operator_short": "TDG", "imsi": "262011234500001",
                "iccid": "89490200001234500017"}

MODEL = ModemModel(
    key="bc66",
    manufacturer="Quectel",
    model="BC66",
    revision="BC66NBR01A10",
    ati=("Quectel_Ltd", "Quectel_BC66", "Revision: BC66NBR01A10"),
    answers={
        **_FAMILY_ANSWERS,
        "AT+QNBIOTRAI?": lambda s: (f"+QNBIOTRAI: {s.extra.get('qnbiotrai', '0')}",),
        "AT+QIOPEN=?": ('+QIOPEN: (1-3),(0-4),("TCP","UDP"),"<IP_address>/<domain_name>",(1-65535),(0-65535),(0,1)',),
        'AT+QICFG="DATAFORMAT"': lambda s: (f'+QICFG: "dataformat",{int(bool(s.extra.get("hex_send")))},'
                                            f'{int(bool(s.extra.get("hex_receive")))}',),
    },
    handlers=_FAMILY_HANDLERS + (
        (r"AT\+QSCLK=([012])", nbiot.setting("qsclk", ("0", "1", "2"))),
        (r"AT\+QNBIOTRAI=([012])", nbiot.setting("qnbiotrai", ("0", "1", "2"))),
        (r'AT\+QICFG="dataformat",(\d),(\d)', _qicfg_dataformat),
        (r'AT\+QIOPEN=(\d+),(\d+),"(TCP|UDP)","([^"]+)",(\d+)(?:,(\d+)(?:,(\d+))?)?', _qiopen),
        (r"AT\+QISEND=(\d+),(\d+),(\"?[0-9A-Za-z]*\"?)", _qisend),
        (r"AT\+QIRD=(\d+),(\d+)", _qird),
        (r"AT\+QICLOSE=(\d+)", _qiclose),
    ),
    boot_urcs=("RDY",),
    initial_state={**_NBIOT_STATE, "imei": "866425030012340"},
)

BC95 = ModemModel(
    key="bc95",
    manufacturer="Quectel",
    model="BC95",
    revision="BC95HBR01A01",
    ati=("Quectel", "BC95", "Revision: BC95HBR01A01"),
    answers={**_FAMILY_ANSWERS, "AT+NSOCR=?": ("+NSOCR: (DGRAM),(17),(0-65535),(0,1)",)},
    handlers=_FAMILY_HANDLERS + (
        (r"AT\+NSOCR=(\w+),(\d+),(\d+)(?:,([01]))?", _nsocr),
        (r"AT\+NSOST=(\d+),([^,]+),(\d+),(\d+),([0-9A-Fa-f]*)", _nsost),
        (r"AT\+NSOSTF=(\d+),([^,]+),(\d+),(0x[0-9A-Fa-f]+|\d+),(\d+),([0-9A-Fa-f]*)", _nsostf),
        (r"AT\+CNMPSD", nbiot.no_more_data),
        (r"AT\+NSORF=(\d+),(\d+)", _nsorf),
        (r"AT\+NSOCL=(\d+)", _nsocl),
    ),
    boot_urcs=("REBOOT_CAUSE_APPLICATION_AT", "Neul", "OK"),
    initial_state={**_NBIOT_STATE, "imei": "866425030012357"},
)
