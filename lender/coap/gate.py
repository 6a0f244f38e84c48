"""The datagram gate: per-source budgets in front of aiocoap's message layer, so that a flood costs the lender little.

The lender's port is open to the internet. aiocoap spends some 100 µs and, for
a request, a de-duplication entry kept for EXCHANGE_LIFETIME (247 s) on every
datagram it reads; an attacker sending more than the event loop can parse
would delay every honest device and grow the lender's memory without bound.
So every datagram meets the gate first, before it is parsed:

* a host that recently delivered authenticated evidence (an OSCORE request
  from a registered device, or a plain request that stored a new signed
  envelope: `trust`, lender.coap.screen) spends from its own budget,
  `TRUSTED` (2,000/s: a gateway draining a day of backlog);
* any other host spends from its own budget, `STRANGER` (20/s), and from one
  budget shared by all strangers, `STRANGERS` (1,000/s, with a short burst:
  a flood's first moment must not fill the event loop with work);
* a datagram over budget is dropped unread and counted (answering it would
  cost as much, and would reflect traffic at a spoofed source).

Hosts are keyed by IPv4 address or by IPv6 /64 (one subscriber's prefix).
Trust lasts `TRUST_S` after the last authenticated request. Every table is
bounded (lender.coap.limits). The reading itself is batched: one wake-up of
the event loop reads up to `READ_BATCH` datagrams, and stops early once it has
admitted `ADMIT_BATCH`, so a flood of dropped datagrams costs a few µs each
and the honest requests' own work still gets the loop between batches.

`install` also bounds aiocoap's de-duplication cache (`DEDUPLICATION_ENTRIES`,
oldest forgotten first): a request retransmitted after its entry was
forgotten is processed again, which the lender's resources allow (storage
is exactly-once by (device, seq); Block1 takes a repeated block). And it
quiets aiocoap's per-datagram log lines (`AiocoapChatter`: an unparsable
datagram, a duplicate, a refusal rendered), which anyone could otherwise
send by the thousand: a few of each a minute, the rest counted.

This is the one module that reaches into aiocoap's internals (the UDP
transport's reader, the message manager's de-duplication); aiocoap is pinned
(pyproject.toml) and `install` checks that what it replaces is there.
"""
from __future__ import annotations

import collections
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiocoap
from aiocoap.numbers.types import CON
from aiocoap.util import socknumbers

from lender.coap.limits import Budgets, Rate
from lender.coap.routing import Wrapper

log = logging.getLogger(__name__)

TRUSTED = Rate(per_s=2000.0, burst=4000.0)      # one host that delivered authenticated evidence lately (a drain)
STRANGER = Rate(per_s=20.0, burst=40.0)         # one host the lender has no reason to trust
STRANGERS = Rate(per_s=1000.0, burst=200.0)     # all strangers together
DEVICE = Rate(per_s=2.0, burst=20.0)            # unauthenticated requests naming one device (lender.coap.screen)
TRUST_S = 600.0
HOSTS = 16384                 # stranger buckets kept (least recently used forgotten first)
TRUSTED_HOSTS = 4096
READ_BATCH = 64               # datagrams read per wake-up of the event loop, at most
ADMIT_BATCH = 8               # admitted datagrams per wake-up, at most (each costs aiocoap ~100 µs)
DEDUPLICATION_ENTRIES = 4096  # aiocoap's request de-duplication cache, bounded (~3 KiB an entry, with its answer)
# The socket's receive buffer: a burst (or a few 63 KiB datagrams, ~128 KiB of kernel memory each) must not
# overflow it while the event loop is busy, or the kernel drops honest datagrams before the gate sees them.
# Linux caps it at net.core.rmem_max (212992 on a stock Debian: raise it, docs/lender-guide.md).
RECEIVE_BUFFER = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """The budgets strangers spend from: per host and all together at the gate, per named device in the strangers'
    lane (`lender serve` uses the defaults; a test may widen them)."""

    trusted: Rate = TRUSTED
    stranger: Rate = STRANGER
    strangers: Rate = STRANGERS
    device: Rate = DEVICE
    trust_s: float = TRUST_S


def host_key(host: str) -> str | bytes:
    """The budget key of a source host: the IPv4 address (also when v4-mapped), or the IPv6 /64."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    if ":" not in host:
        return host
    try:
        return ipaddress.IPv6Address(host.partition("%")[0]).packed[:8]
    except ValueError:
        return host


class DatagramGate:
    """Decides, per datagram and by its source host alone, whether aiocoap gets to read it."""

    def __init__(self, policy: GatePolicy = GatePolicy(), *, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._trusted_until: collections.OrderedDict[str | bytes, float] = collections.OrderedDict()
        self._trusted = Budgets(policy.trusted, capacity=TRUSTED_HOSTS, clock=clock)
        self._strangers = Budgets(policy.stranger, capacity=HOSTS, clock=clock)
        self._all_strangers = Budgets(policy.strangers, capacity=1, clock=clock)
        self.admitted = 0
        self.dropped = 0
        self.unparsable = 0       # admitted datagrams aiocoap's parser raised on (ignored)
        self.dropped_hosts: collections.Counter = collections.Counter()  # since the last `take_dropped`
        self.chatter = AiocoapChatter(clock)

    def admit(self, host: str) -> bool:
        key = host_key(host)
        until = self._trusted_until.get(key)
        if until is not None and until >= self._clock():
            ok = self._trusted.take(key)
        else:
            ok = self._strangers.take(key) and self._all_strangers.take(None)
        if ok:
            self.admitted += 1
        else:
            self.dropped += 1
            if len(self.dropped_hosts) < 1000 or key in self.dropped_hosts:
                self.dropped_hosts[key] += 1
        return ok

    def trust(self, host: str) -> None:
        """`host` just delivered authenticated evidence: its datagrams spend the trusted budget for `trust_s`."""
        key = host_key(host)
        self._trusted_until[key] = self._clock() + self.policy.trust_s
        self._trusted_until.move_to_end(key)
        while len(self._trusted_until) > TRUSTED_HOSTS:
            self._trusted_until.popitem(last=False)

    def take_dropped(self) -> tuple[int, list[tuple[str, int]]]:
        """Datagrams dropped since the last call, and the hosts that sent most of them (for the log's summary)."""
        hosts = [(_shown_host(key), count) for key, count in self.dropped_hosts.most_common(3)]
        total = sum(self.dropped_hosts.values())
        self.dropped_hosts.clear()
        return total, hosts


def _shown_host(key: str | bytes) -> str:
    return key if isinstance(key, str) else f"{ipaddress.IPv6Address(key + bytes(8))}/64"


def host_of(remote) -> str | None:
    """The source host of a request's remote (through OSCORE to the UDP address), None if it has none."""
    underlying = getattr(remote, "underlying_address", remote)
    sockaddr = getattr(underlying, "sockaddr", None)
    return sockaddr[0] if sockaddr else None


class TrustAuthenticated(Wrapper):
    """Inside the OSCORE site: a request a registered device's context protected makes its host trusted."""

    def __init__(self, inner, gate: DatagramGate, device_of: Callable[[object], str | None]) -> None:
        super().__init__(inner)
        self._gate = gate
        self._device_of = device_of

    async def render_to_pipe(self, pipe) -> None:
        if self._device_of(pipe.request) is not None:
            host = host_of(pipe.request.remote)
            if host is not None:
                self._gate.trust(host)
        await self.inner.render_to_pipe(pipe)


# --- aiocoap's internals, touched here only ----------------------------------------------------

def udp_transports(context: aiocoap.Context) -> list:
    """The (transport, protocol) pairs of the UDP interfaces under an aiocoap server context."""
    found = []
    for token_manager in context.request_interfaces:
        message_manager = getattr(token_manager, "token_interface", None)
        protocol = getattr(message_manager, "message_interface", None)
        transport = getattr(protocol, "transport", None)
        if transport is not None and hasattr(transport, "_read_ready"):
            found.append((transport, protocol, message_manager))
    return found


def remote(context: aiocoap.Context, host: str, port: int):
    """The remote address aiocoap gives a datagram from (`host`, `port`) on the context's UDP interface."""
    from aiocoap.transports.udp6 import UDP6EndpointAddress, _in6_pktinfo

    (transport, protocol, _), *_ = udp_transports(context)
    mapped = f"::ffff:{host}" if ":" not in host else host
    local = transport.get_extra_info("socket").getsockname()[0]
    pktinfo = _in6_pktinfo.pack(socket.inet_pton(socket.AF_INET6, local.partition("%")[0]), 0)
    return UDP6EndpointAddress((mapped, port, 0, 0), protocol, pktinfo=pktinfo)


CHATTER_LINES = 5             # aiocoap log lines of one kind a minute, at most
CHATTER = (                   # what aiocoap logs for a datagram anyone can send (format strings' beginnings)
    "Ignoring unparsable message", "Received a message with code", "New request came in while",
    "Render request raised a renderable error", "Duplicate ", "Response not recognized", "Ignoring unknown response",
    "Received CoAP Ping", "Did not receive requested pktinfo", "Received unexpected ancillary data",
)


class AiocoapChatter(logging.Filter):
    """Lets `CHATTER_LINES` of each kind of aiocoap's per-datagram log lines through a minute; counts the rest."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._window: dict[str, list[float]] = {}   # kind -> [minute start, lines let through]
        self.quieted = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        kind = next((k for k in CHATTER if message.startswith(k)), None)
        if kind is None:
            return True
        now = self._clock()
        window = self._window.get(kind)
        if window is None or now - window[0] >= 60.0:
            window = self._window[kind] = [now, 0]
        if window[1] < CHATTER_LINES:
            window[1] += 1
            return True
        self.quieted += 1
        return False

    def take_quieted(self) -> int:
        quieted, self.quieted = self.quieted, 0
        return quieted


def install(context: aiocoap.Context, gate: DatagramGate, *, max_datagram: int) -> None:
    """Put `gate` in front of each UDP interface of `context`, read whole datagrams, bound de-duplication."""
    installed = 0
    for transport, protocol, message_manager in udp_transports(context):
        sock = transport.get_extra_info("socket")
        if sock is None or not hasattr(message_manager, "_deduplicate_message"):
            continue
        transport.max_size = max_datagram
        transport._read_ready = _gated_reader(sock, protocol, gate, max_datagram)
        _raise_receive_buffer(sock)
        _bound_deduplication(message_manager, DEDUPLICATION_ENTRIES)
        installed += 1
    if not installed:
        raise RuntimeError("no UDP interface of aiocoap found to put the datagram gate in front of "
                           "(aiocoap is pinned in pyproject.toml: was it upgraded?)")
    if not any(isinstance(f, AiocoapChatter) for f in context.log.filters):
        context.log.addFilter(gate.chatter)


def _raise_receive_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports twice what it keeps
    except OSError as exc:
        log.warning("could not raise the UDP receive buffer (%s): under a flood the kernel may drop honest datagrams",
                    exc)
        return
    if granted < RECEIVE_BUFFER // 2:
        log.warning("the UDP receive buffer is %d KiB (net.core.rmem_max); under a flood the kernel may drop honest "
                    "datagrams before the lender reads them: raise it to %d (sysctl -w net.core.rmem_max=%d)",
                    granted // 1024, RECEIVE_BUFFER, RECEIVE_BUFFER)


def _gated_reader(sock: socket.socket, protocol, gate: DatagramGate, max_datagram: int) -> Callable[[], None]:
    buffer = bytearray(max_datagram)
    view = memoryview(buffer)

    def read_ready() -> None:
        if socknumbers.HAS_RECVERR:  # ICMP errors for what the lender sent, as aiocoap reads them
            try:
                data, ancdata, flags, address = sock.recvmsg(max_datagram, 1024, socknumbers.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                protocol.error_received(exc)
            else:
                protocol.datagram_errqueue_received(data, ancdata, flags, address)
        admitted = 0
        for _ in range(READ_BATCH):
            try:
                size, ancdata, flags, address = sock.recvmsg_into([view], 1024)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return
            if gate.admit(address[0]):
                try:
                    protocol.datagram_msg_received(bytes(view[:size]), ancdata, flags, address)
                except Exception:  # aiocoap's parser chokes on some datagrams (an option that is not UTF-8):
                    gate.unparsable += 1  # the datagram is ignored, as an unparsable one is, not an error to log
                admitted += 1
                if admitted >= ADMIT_BATCH:
                    return

    return read_ready


def _bound_deduplication(manager, capacity: int) -> None:
    """aiocoap keeps every request's (remote, mid) for EXCHANGE_LIFETIME with a timer each; keep at most
    `capacity`, forgetting the oldest, with no timers."""
    recent: collections.OrderedDict = collections.OrderedDict()  # (remote, mid) -> [expires, response]
    clock = time.monotonic

    def deduplicate(message) -> bool:
        now = clock()
        while recent:
            first = next(iter(recent.values()))
            if first[0] > now:
                break
            recent.popitem(last=False)
        key = (message.remote, message.mid)
        entry = recent.get(key)
        if entry is not None:
            if message.mtype is CON and entry[1] is not None:
                manager._send_initially(entry[1])  # the duplicate of a request answered already: the same answer
            return True
        recent[key] = [now + message.transport_tuning.EXCHANGE_LIFETIME, None]
        if len(recent) > capacity:
            recent.popitem(last=False)
        return False

    def store_response(message) -> None:
        entry = recent.get((message.remote, message.mid))
        if entry is not None:
            entry[1] = message

    manager._recent_messages = recent
    manager._deduplicate_message = deduplicate
    manager._store_response_for_duplicates = store_response
