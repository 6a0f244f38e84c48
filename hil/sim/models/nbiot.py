"""NB-IoT pieces shared by the simulated BC66, BC95 and SIM7080G: UDP sockets that are real sockets on 127.0.0.1, and PSM.

A simulated modem's socket is a real UDP socket bound to 127.0.0.1 (an
ephemeral port, as behind a carrier's NAT), so a node's CoAP really reaches a
lender over loopback. Its datagrams come back into the simulator's event loop
(``loop.add_reader``) and turn into the model's URCs.

The network between the modem and the lender is a `UdpLink`, one per
simulator and kept across modem reboots (the network does not reboot with
the modem). Its knobs are faults of the air interface, one line each::

    link = nbiot.link(sim)
    link.drop_downlink = 2     # the next two datagrams towards the node are lost
    link.drop_uplink = 1       # the next datagram from the node is lost
    link.busy_sends = 1        # the next send answers +CME ERROR: 159 (uplink busy)

and it records every datagram (`link.datagrams`: (time.monotonic(), "up" or
"down", bytes, delivered)) for tests to assert. An on-path attacker is one
knob too: ``link.forge = f`` calls ``f(datagram)`` for each uplink request,
and whatever bytes it returns reach the node as a downlink datagram at once,
before anything the lender answers (recorded as "forged").

The radio connection (RRC, TS 36.331) is modelled as a cell runs it, in
`link.rrc`: connected by the first datagram either way (+CSCON: 1 when
AT+CSCON=1 asked for it), kept while datagrams flow, released when the
network's inactivity timer (``link.rrc.inactivity_s``, 20 s by default: real
cells use 10-20 s) runs out after the last one, or at once by Release
Assistance: a datagram sent with "release after this uplink" (AT+NSOSTF flag
0x200, AT+QNBIOTRAI=1), "release after the reply" (flag 0x400,
AT+QNBIOTRAI=2: released when the next downlink datagram has arrived), or
AT+CNMPSD (no more data: released now). Closing a socket releases nothing.
Every connection is kept as an episode (connected, released, why), so tests
and the bench read radio-on time from it (`Rrc.radio_on_s`); an episode still
open is counted to where its inactivity timer will end it.

PSM (TS 27.007 §7.38 +CPSMS): a model that enables it goes to sleep
`PSM_ENTER_S` after its last socket closes; with +CPSMSTATUS reporting on
(SIM7080G) it says "ENTER PSM", and the next command wakes it ("EXIT PSM").
The simulated modem still answers that first command: a real one may drop
it, which the node's driver covers by repeating AT.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from hil.sim.model import CommandContext, Reply, SimState, SimulatedModem, error

PSM_ENTER_S = 0.05
INACTIVITY_S = 20.0  # a typical network RRC inactivity timer (10-20 s)

Release = Literal["uplink", "downlink"]  # Release Assistance: after this uplink datagram, or after the reply to it


@dataclass(slots=True)
class Rrc:
    """The RRC connection between a simulated modem and the cell, with every connected episode (see module docstring)."""

    inactivity_s: float = INACTIVITY_S
    connected_since: float | None = None
    last_activity: float = 0.0
    release_on_downlink: bool = False
    episodes: list[tuple[float, float, str]] = field(default_factory=list)  # (connected, released, why)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def connected(self) -> bool:
        return self.connected_since is not None

    def radio_on_s(self) -> float:
        """Seconds connected, all episodes; an open one is counted to where its inactivity timer will end it."""
        total = sum(released - connected for connected, released, _ in self.episodes)
        if self.connected_since is not None:
            total += self.last_activity + self.inactivity_s - self.connected_since
        return total

    def expire(self) -> None:
        """End an open connection where its inactivity timer will (a test skipping the wait); the URC is not sent."""
        if self.connected_since is not None:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.episodes.append((self.connected_since, self.last_activity + self.inactivity_s, "inactivity"))
            self.connected_since = None
            self.release_on_downlink = False

    def releases(self) -> list[str]:
        """Why each finished episode ended: "rai", "no-more-data", "inactivity"."""
        return [why for _, _, why in self.episodes]


@dataclass(slots=True)
class UdpLink:
    """The air interface and the carrier's network between one simulated modem and the internet (see module docstring)."""

    drop_downlink: int = 0
    drop_uplink: int = 0
    busy_sends: int = 0
    forge: Callable[[bytes], bytes | None] | None = None
    datagrams: list[tuple[float, str, bytes, bool]] = field(default_factory=list)
    rrc: Rrc = field(default_factory=Rrc)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, direction: str, data: bytes, delivered: bool) -> None:
        with self._lock:
            self.datagrams.append((time.monotonic(), direction, bytes(data), delivered))

    def sent(self) -> list[bytes]:
        """The requests the node sent (delivered or not), in order: not the empty ACKs it sends to confirm the
        lender's separate (CON) responses, which a lender slow to answer sends."""
        with self._lock:
            return [d for _, direction, d, _ in self.datagrams if direction == "up" and is_request(d)]

    def take_uplink_loss(self) -> bool:
        with self._lock:
            if self.drop_uplink > 0:
                self.drop_uplink -= 1
                return True
            return False

    def take_downlink_loss(self) -> bool:
        with self._lock:
            if self.drop_downlink > 0:
                self.drop_downlink -= 1
                return True
            return False

    def take_busy(self) -> bool:
        with self._lock:
            if self.busy_sends > 0:
                self.busy_sends -= 1
                return True
            return False


_LINKS: weakref.WeakKeyDictionary[SimulatedModem, UdpLink] = weakref.WeakKeyDictionary()
_LINKS_LOCK = threading.Lock()


def is_request(datagram: bytes) -> bool:
    """A CoAP request: code class 0 and not the empty message (an ACK or RST the node sends is not one)."""
    return len(datagram) >= 4 and 0 < datagram[1] < 32


def is_response(datagram: bytes) -> bool:
    """A CoAP response: code class 2 to 5 (the lender's empty ACK before a separate response is not one)."""
    return len(datagram) >= 4 and datagram[1] >= 64


def link(sim: SimulatedModem) -> UdpLink:
    """The UdpLink of a simulator (made on first use, kept across its reboots)."""
    with _LINKS_LOCK:
        found = _LINKS.get(sim)
        if found is None:
            found = _LINKS[sim] = UdpLink()
        return found


@dataclass(slots=True)
class SimSocket:
    """One socket of a simulated modem: the real UDP socket, its peer, and datagrams not yet read by the host."""

    sid: int
    sock: socket.socket
    peer: tuple[str, int] | None = None
    inbox: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    options: dict[str, object] = field(default_factory=dict)
    arrived: Callable[[SimulatedModem, SimSocket, bytes, tuple[str, int]], None] | None = None


def sockets(state: SimState) -> dict[int, SimSocket]:
    return state.extra.setdefault("sockets", {})  # type: ignore[return-value]


def resolve(host: str, port: int) -> tuple[str, int] | None:
    """The IPv4 address of host:port, or None if it does not resolve (the model answers with its error)."""
    try:
        info = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    address = info[0][4]
    return str(address[0]), int(address[1])


def open_socket(ctx: CommandContext, sid: int, peer: tuple[str, int] | None,
                arrived: Callable[[SimulatedModem, SimSocket, bytes, tuple[str, int]], None],
                **options: object) -> SimSocket:
    """Open a real UDP socket on 127.0.0.1 for modem socket `sid`; `arrived` turns each datagram into URCs."""
    sim, state = ctx.sim, ctx.state
    wake(state)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    entry = SimSocket(sid, sock, peer, options=dict(options), arrived=arrived)
    sockets(state)[sid] = entry
    loop = asyncio.get_running_loop()

    def readable() -> None:
        if sockets(state).get(sid) is not entry:  # closed, or the modem rebooted: this socket is gone
            _forget(loop, sock)
            return
        try:
            data, address = sock.recvfrom(65535)
        except BlockingIOError:
            return
        except OSError:
            _forget(loop, sock)
            return
        lost = link(sim).take_downlink_loss()
        link(sim).record("down", data, not lost)
        if lost:
            return
        arrived(sim, entry, data, (str(address[0]), int(address[1])))
        activity(sim, state, "down")

    loop.add_reader(sock.fileno(), readable)
    return entry


def _forget(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    try:
        loop.remove_reader(sock.fileno())
    except (ValueError, OSError):
        pass
    sock.close()


def close_socket(ctx: CommandContext, sid: int) -> bool:
    entry = sockets(ctx.state).pop(sid, None)
    if entry is None:
        return False
    _forget(asyncio.get_running_loop(), entry.sock)
    if not sockets(ctx.state):
        schedule_psm(ctx)  # the radio connection is the cell's: its inactivity timer or RAI releases it
    return True


def send_datagram(ctx: CommandContext, entry: SimSocket, data: bytes, peer: tuple[str, int],
                  release: Release | None = None) -> None:
    """The node's datagram goes out on the real socket (unless the link loses it), with Release Assistance if given."""
    air = link(ctx.sim)
    lost = air.take_uplink_loss()
    air.record("up", data, not lost)
    activity(ctx.sim, ctx.state, "up")
    if not lost:
        entry.sock.sendto(data, peer)
    forged = air.forge(bytes(data)) if air.forge is not None and is_request(data) else None
    if forged is not None and entry.arrived is not None:
        air.record("forged", forged, True)
        entry.arrived(ctx.sim, entry, forged, peer)
    if release == "uplink":
        release_radio(ctx.sim, ctx.state, "rai")
    elif release == "downlink":
        air.rrc.release_on_downlink = True


# --- the radio connection (RRC) ------------------------------------------------------

def activity(sim: SimulatedModem, state: SimState, direction: str) -> None:
    """A datagram crossed the air: connect if idle, restart the inactivity timer, honour an armed release."""
    rrc = link(sim).rrc
    now = time.monotonic()
    if rrc.connected_since is None:
        rrc.connected_since = now
        radio(sim, state, True)
    rrc.last_activity = now
    if direction == "down" and rrc.release_on_downlink:
        release_radio(sim, state, "rai")
        return
    if rrc.timer is not None:
        rrc.timer.cancel()

    def expire() -> None:
        if rrc.connected_since is not None and time.monotonic() - rrc.last_activity >= rrc.inactivity_s - 0.01:
            release_radio(sim, state, "inactivity", at=rrc.last_activity + rrc.inactivity_s)
    rrc.timer = asyncio.get_running_loop().call_later(rrc.inactivity_s, expire)


def release_radio(sim: SimulatedModem, state: SimState, why: str, at: float | None = None) -> None:
    """The cell releases the connection (+CSCON: 0 if asked for); a no-op when idle."""
    rrc = link(sim).rrc
    rrc.release_on_downlink = False
    if rrc.timer is not None:
        rrc.timer.cancel()
        rrc.timer = None
    if rrc.connected_since is None:
        return
    rrc.episodes.append((rrc.connected_since, time.monotonic() if at is None else at, why))
    rrc.connected_since = None
    if sim.state is state:  # a modem that rebooted since has no connection to report
        radio(sim, state, False)


def no_more_data(ctx: CommandContext) -> Reply:
    """AT+CNMPSD (TS 27.007 §10.1.41): no more PS data for now; the network releases the connection at once."""
    release_radio(ctx.sim, ctx.state, "no-more-data")
    return Reply()


def busy(ctx: CommandContext) -> Reply | None:
    """+CME ERROR: 159 (uplink busy) when the link's busy_sends knob says so."""
    return error(159) if link(ctx.sim).take_busy() else None


# --- PSM --------------------------------------------------------------------------------

def psm_settings(ctx: CommandContext) -> Reply:
    """AT+CPSMS=<mode>[,,,<T3412>,<T3324>] (TS 27.007 §7.38): timers are 8-bit GPRS timer strings."""
    mode = ctx.match.group(1)
    timers = [t for t in (ctx.match.group(2), ctx.match.group(3)) if t is not None]
    if mode not in ("0", "1", "2") or any(len(t) != 8 or set(t) - {"0", "1"} for t in timers):
        return error(50)
    ctx.state.extra["psm"] = mode == "1"
    if timers:
        ctx.state.extra["psm_timers"] = tuple(timers)
    return Reply()


def psm_read(state: SimState) -> tuple[str, ...]:
    tau, active = state.extra.get("psm_timers", ("00111000", "00000001"))  # type: ignore[misc]
    return (f'+CPSMS: {1 if state.extra.get("psm") else 0},,,"{tau}","{active}"',)


def schedule_psm(ctx: CommandContext) -> None:
    state, sim = ctx.state, ctx.sim
    if not state.extra.get("psm"):
        return

    def enter() -> None:
        if state.extra.get("psm") and not sockets(state) and not state.extra.get("asleep"):
            state.extra["asleep"] = True
            if state.extra.get("psm_urcs"):
                sim.emit_urc('+CPSMSTATUS: "ENTER PSM"')
    asyncio.get_running_loop().call_later(PSM_ENTER_S, enter)


def wake(state: SimState) -> bool:
    """A command arrived: a sleeping modem wakes. True if it was asleep."""
    if state.extra.get("asleep"):
        state.extra["asleep"] = False
        return True
    return False


def at(ctx: CommandContext) -> Reply:
    """Plain AT: wakes the modem from PSM (with +CPSMSTATUS: "EXIT PSM" when those URCs are on)."""
    if wake(ctx.state) and ctx.state.extra.get("psm_urcs"):
        return Reply(after=('+CPSMSTATUS: "EXIT PSM"',))
    return Reply()


def radio(sim: SimulatedModem, state: SimState, connected: bool) -> None:
    """The RRC connection changes: +CSCON: <mode> when AT+CSCON=1 asked for it (TS 27.007 §10.1.30)."""
    if state.connected != connected and state.extra.get("cscon") == "1":
        sim.emit_urc(f"+CSCON: {1 if connected else 0}")
    state.connected = connected


def cscon(state: SimState) -> tuple[str, ...]:
    """AT+CSCON? (TS 27.007 §10.1.30): <n>,<mode>, mode 1 while the radio is connected."""
    return (f"+CSCON: {state.extra.get('cscon', '0')},{1 if state.connected else 0}",)


def setting(name: str, allowed: tuple[str, ...]) -> Callable[[CommandContext], Reply]:
    """A handler that stores group(1) under state.extra[name] if allowed, else +CME ERROR: 50."""
    def handle(ctx: CommandContext) -> Reply:
        value = ctx.match.group(1)
        if value not in allowed:
            return error(50)
        ctx.state.extra[name] = value
        return Reply()
    return handle


def raw_answer(data: bytes) -> Reply:
    """A reply whose bytes are not text (AT+CARECV's raw payload): written as-is, final code included.

    The framework's Reply carries text lines; this writes the whole answer
    through the simulator once the (empty) reply is on the wire.
    """
    return Reply(final=None, action=lambda sim: sim.send_raw(data))
