"""hil.netem — a userspace UDP proxy that puts a bad network between the agent and the lender.

The kernel's netem qdisc is not available everywhere (this project's CI
kernel has none), so the rig brings its own: a UDP relay on 127.0.0.1 that
the agent is pointed at instead of the lender. Each datagram, in each
direction, meets the current `Impairment`:

* ``loss``: dropped with this probability;
* ``delay_s`` ± ``jitter_s``: held for ``delay_s + uniform(-jitter_s, +jitter_s)``
  seconds (never below zero), like netem's ``delay 100ms 50ms``; jitter
  reorders datagrams as a side effect, as it does on a real link;
* ``duplicate``: sent twice (the copy right after the original);
* ``reorder``: held back ``reorder_s`` more, so the datagrams behind it
  overtake it;

and a *partition* drops everything (both directions, or one) until it is
healed or its duration has passed.

Deterministic with a seed: each direction draws from its own
`random.Random`, four draws per datagram whatever the settings, so the n-th
datagram of a direction meets the same fate in every run with the same seed
and the same impairment. (When the datagrams arrive still depends on the
processes at either end.)

    with UdpProxy(target=("127.0.0.1", 5683), seed=7) as proxy:
        agent_uri = f"coap://127.0.0.1:{proxy.port}"
        proxy.impair(loss=0.3, jitter_s=0.5)          # a flaky link
        proxy.partition(for_s=30)                     # 30 s of nothing
        proxy.impair(down=Impairment(loss=1.0))       # acks lost, requests arrive
        proxy.heal()                                  # a clean link again

From a shell, until Ctrl-C::

    python -m hil.netem --target 127.0.0.1:5683 --listen 127.0.0.1:5684 --loss 0.3 --jitter 0.5 --seed 7

The proxy runs its asyncio loop in a background thread (so synchronous
scenario code can drive it), keeps one upstream socket per client address
(an agent restarted after a power cut is a new client), and counts what it
did per direction (`stats()`), with a timestamped log of every change
(`events()`) for the run's report.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hil.exc import ImpairmentError, NetemError

log = logging.getLogger(__name__)

UP, DOWN = "up", "down"  # up: client (agent) -> target (lender); down: the answers
DIRECTIONS = (UP, DOWN)
MAX_CLIENTS = 64  # upstream sockets kept; the oldest is closed beyond this
MAX_HELD = 100_000  # datagrams waiting in delay queues; beyond this new ones are dropped (and counted)


@dataclass(frozen=True, slots=True)
class Impairment:
    """What one direction of the link does to each datagram (validated when built)."""

    loss: float = 0.0
    delay_s: float = 0.0
    jitter_s: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_s: float = 0.2

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ImpairmentError(f"{name} is a probability between 0 and 1, got {value!r}")
        for name in ("delay_s", "jitter_s", "reorder_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 3600.0:
                raise ImpairmentError(f"{name} is a number of seconds between 0 and 3600, got {value!r}")

    @property
    def clean(self) -> bool:
        return self == CLEAN

    def describe(self) -> str:
        """Short human text: ``loss 30%, delay 250 ms ± 500 ms``."""
        if self.clean:
            return "clean"
        parts = []
        if self.loss:
            parts.append(f"loss {self.loss:.0%}")
        if self.delay_s or self.jitter_s:
            parts.append(f"delay {self.delay_s * 1000:.0f} ms" + (f" ± {self.jitter_s * 1000:.0f} ms" if self.jitter_s else ""))
        if self.duplicate:
            parts.append(f"duplicate {self.duplicate:.0%}")
        if self.reorder:
            parts.append(f"reorder {self.reorder:.0%} (+{self.reorder_s * 1000:.0f} ms)")
        return ", ".join(parts)


CLEAN = Impairment()


@dataclass(frozen=True, slots=True)
class Fate:
    """What happens to one datagram: dropped, or sent after `delays` (one entry per copy)."""

    dropped: bool
    delays: tuple[float, ...] = ()
    reordered: bool = False


def decide(impairment: Impairment, rng: random.Random) -> Fate:
    """The fate of the next datagram. Always four draws, so the stream stays aligned across settings."""
    lose, dup, jitter, reorder = rng.random(), rng.random(), rng.random(), rng.random()
    if lose < impairment.loss:
        return Fate(dropped=True)
    delay = max(0.0, impairment.delay_s + (2.0 * jitter - 1.0) * impairment.jitter_s)
    reordered = reorder < impairment.reorder
    if reordered:
        delay += impairment.reorder_s
    delays = (delay, delay) if dup < impairment.duplicate else (delay,)
    return Fate(dropped=False, delays=delays, reordered=reordered)


@dataclass(slots=True)
class DirectionStats:
    """Counts for one direction since the proxy started."""

    received: int = 0
    forwarded: int = 0       # datagrams sent on, copies included
    lost: int = 0            # dropped by `loss`
    partitioned: int = 0     # dropped while partitioned
    duplicated: int = 0
    reordered: int = 0
    overflowed: int = 0      # dropped because MAX_HELD datagrams were already waiting
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """One change to the link: `at` is `time.time()`; kind is 'impair', 'partition' or 'heal'."""

    at: float
    kind: str
    detail: str


@dataclass(slots=True)
class _Direction:
    impairment: Impairment
    rng: random.Random
    stats: DirectionStats = field(default_factory=DirectionStats)
    partitioned_until: float | None = None  # time.monotonic(); inf while partitioned without end


class _Upstream(asyncio.DatagramProtocol):
    """The proxy's socket towards the target for one client: answers go back to that client."""

    def __init__(self, proxy: UdpProxy, client: tuple[str, int]) -> None:
        self.proxy = proxy
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        front = self.proxy._front
        if front is not None:
            self.proxy._relay(DOWN, data, lambda d: front.sendto(d, self.client))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the lender is down: the datagram is lost, as on a real link.
        log.debug("netem upstream for %s: %s", self.client, exc)


class _Front(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr) -> None:
        self.proxy._from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("netem front: %s", exc)


class UdpProxy:
    """A UDP relay with a controllable bad network in the middle (see the module docstring)."""

    def __init__(self, target: tuple[str, int], *, listen: tuple[str, int] = ("127.0.0.1", 0), seed: int = 0,
                 clock: Callable[[], float] = time.time) -> None:
        host, port = target
        if not isinstance(port, int) or not 0 < port < 65536:
            raise NetemError(f"target port must be 1..65535, got {port!r}")
        self.target = (host, port)
        self.listen = listen
        self.seed = seed
        self._clock = clock
        self._lock = threading.Lock()
        self._directions = {d: _Direction(CLEAN, random.Random(f"{seed}/{d}")) for d in DIRECTIONS}
        self._events: list[LinkEvent] = []
        self._clients: OrderedDict[tuple[str, int], _Upstream] = OrderedDict()
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self._held = 0
        self._front: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.address: tuple[str, int] | None = None

    # --- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self.address is None:
            raise NetemError("proxy not started: call start() first")
        return self.address[1]

    def start(self) -> UdpProxy:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="netem-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(5.0):
            raise NetemError("the UDP proxy did not start within 5 s")
        if self._startup_error is not None:
            error, self._thread = self._startup_error, None
            raise NetemError(f"cannot listen on {self.listen[0]}:{self.listen[1]}: {error}") from error
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        self._thread = None

    def __enter__(self) -> UdpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            transport, _ = loop.run_until_complete(
                loop.create_datagram_endpoint(lambda: _Front(self), local_addr=self.listen))
        except OSError as exc:
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._front = transport
        self.address = transport.get_extra_info("sockname")[:2]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            transport.close()
            for upstream in self._clients.values():
                if upstream.transport is not None:
                    upstream.transport.close()
            self._clients.clear()
            self._front = None
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    # --- control (any thread) ---------------------------------------------------

    def impair(self, impairment: Impairment | None = None, *, up: Impairment | None = None,
               down: Impairment | None = None, **settings: float) -> None:
        """Set the impairment: one for both directions (an `Impairment` or its fields), or `up`/`down` apart.

        ``impair(loss=0.3, jitter_s=0.5)`` changes only those fields of both
        directions' current settings; ``impair(CLEAN)`` restores a clean link.
        """
        with self._lock:
            for direction in DIRECTIONS:
                state = self._directions[direction]
                chosen = {UP: up, DOWN: down}[direction]
                if chosen is not None:
                    new = chosen
                elif impairment is not None:
                    new = impairment
                elif settings and up is None and down is None:
                    try:
                        new = replace(state.impairment, **settings)
                    except TypeError as exc:
                        raise ImpairmentError(f"unknown impairment setting: {exc}") from None
                else:
                    continue
                state.impairment = new
            text = "; ".join(f"{d} {self._directions[d].impairment.describe()}" for d in DIRECTIONS)
            self._note("impair", text)

    def partition(self, for_s: float | None = None, *, direction: str = "both") -> None:
        """Drop every datagram in `direction` ("up", "down" or "both") for `for_s` seconds, or until `heal()`."""
        if direction not in (*DIRECTIONS, "both"):
            raise ImpairmentError(f"direction must be 'up', 'down' or 'both', got {direction!r}")
        if for_s is not None and not 0 < for_s <= 7 * 86400:
            raise ImpairmentError(f"a partition lasts 0 < for_s <= 604800 seconds, got {for_s!r}")
        until = float("inf") if for_s is None else time.monotonic() + for_s
        with self._lock:
            for name in DIRECTIONS if direction == "both" else (direction,):
                self._directions[name].partitioned_until = until
            span = "until healed" if for_s is None else f"for {for_s:g} s"
            self._note("partition", f"{direction} {span}")

    def heal(self) -> None:
        """End any partition and make both directions clean."""
        with self._lock:
            for state in self._directions.values():
                state.partitioned_until = None
                state.impairment = CLEAN
            self._note("heal", "clean link")

    def partitioned(self, direction: str = UP) -> bool:
        state = self._directions[direction]
        until = state.partitioned_until
        return until is not None and time.monotonic() < until

    def impairment(self, direction: str = UP) -> Impairment:
        return self._directions[direction].impairment

    def stats(self) -> dict[str, DirectionStats]:
        """A copy of the counters per direction."""
        with self._lock:
            return {d: replace(s.stats) for d, s in self._directions.items()}

    def events(self) -> list[LinkEvent]:
        with self._lock:
            return list(self._events)

    def _note(self, kind: str, detail: str) -> None:
        self._events.append(LinkEvent(self._clock(), kind, detail))
        log.info("netem %s: %s", kind, detail)

    # --- the data path (the proxy's own thread) ----------------------------------------

    def _from_client(self, data: bytes, client: tuple[str, int]) -> None:
        upstream = self._clients.get(client)
        if upstream is not None and upstream.transport is not None:
            self._clients.move_to_end(client)
            self._relay(UP, data, upstream.transport.sendto)
            return
        if client in self._pending:  # the upstream socket is being opened
            self._pending[client].append(data)
            return
        self._pending[client] = [data]
        asyncio.ensure_future(self._open_upstream(client))

    async def _open_upstream(self, client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, upstream = await loop.create_datagram_endpoint(
                lambda: _Upstream(self, client), remote_addr=self.target)
        except OSError as exc:
            log.warning("netem: cannot open an upstream socket to %s:%s: %s", *self.target, exc)
            self._pending.pop(client, None)
            return
        self._clients[client] = upstream
        while len(self._clients) > MAX_CLIENTS:
            _, old = self._clients.popitem(last=False)
            if old.transport is not None:
                old.transport.close()
        for data in self._pending.pop(client, []):
            self._relay(UP, data, transport.sendto)

    def _relay(self, direction: str, data: bytes, send: Callable[[bytes], object]) -> None:
        with self._lock:
            state = self._directions[direction]
            stats = state.stats
            stats.received += 1
            stats.bytes += len(data)
            fate = decide(state.impairment, state.rng)  # drawn even when partitioned: the stream stays aligned
            until = state.partitioned_until
            if until is not None and time.monotonic() < until:
                stats.partitioned += 1
                return
            if fate.dropped:
                stats.lost += 1
                return
            if self._held + len(fate.delays) > MAX_HELD:
                stats.overflowed += 1
                return
            stats.duplicated += len(fate.delays) - 1
            stats.reordered += fate.reordered
        loop = asyncio.get_running_loop()
        for delay in fate.delays:
            if delay <= 0.0:
                self._send(direction, data, send, held=False)
            else:
                self._held += 1
                loop.call_later(delay, self._send, direction, data, send, True)

    def _send(self, direction: str, data: bytes, send: Callable[[bytes], object], held: bool) -> None:
        if held:
            self._held -= 1
        try:
            send(data)
        except (OSError, RuntimeError, AttributeError) as exc:  # a closed upstream: lost, like on a wire
            log.debug("netem %s: send failed: %s", direction, exc)
            return
        with self._lock:
            self._directions[direction].stats.forwarded += 1


# --- command line ----------------------------------------------------------------------


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.netem", description="A lossy UDP proxy, until Ctrl-C.")
    parser.add_argument("--target", type=_hostport, required=True, metavar="HOST:PORT", help="where to forward to")
    parser.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0), metavar="HOST:PORT")
    parser.add_argument("--loss", type=float, default=0.0, help="probability a datagram is dropped (0..1)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each datagram is held")
    parser.add_argument("--jitter", type=float, default=0.0, help="± seconds around --delay")
    parser.add_argument("--duplicate", type=float, default=0.0, help="probability a datagram is sent twice")
    parser.add_argument("--reorder", type=float, default=0.0, help="probability a datagram is held back")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        impairment = Impairment(loss=args.loss, delay_s=args.delay, jitter_s=args.jitter,
                                duplicate=args.duplicate, reorder=args.reorder)
    except ImpairmentError as exc:
        parser.error(str(exc))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with UdpProxy(args.target, listen=args.listen, seed=args.seed) as proxy:
        proxy.impair(impairment)
        print(f"netem: {proxy.address[0]}:{proxy.port} -> {args.target[0]}:{args.target[1]}, "
              f"{impairment.describe()}, seed {args.seed}", flush=True)
        stop.wait()
        for direction, stats in proxy.stats().items():
            print(f"{direction}: {stats}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
