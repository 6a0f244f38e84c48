"""hil.flood — an attacker on the internet: floods of hostile datagrams against the lender, from many addresses.

The lender listens where anyone can reach it, so the rig can play the outsider
of ARCHITECTURE.md's threat model. A `Flood` runs in a child process of its
own (it takes a core as an attacker's machine would, and never the GIL of the
code measuring honest devices), sending from `sources` addresses of
127.0.0.0/8 (127.0.0.2, 127.0.0.3, ...: on Linux every one of them is the
loopback) at `rate` datagrams per second, or as fast as it can with
``rate=None``. Each datagram is one `Attack` of the mix, drawn by its weight:

* ``node_junk``: a CoAP POST to ``/n`` (no credentials needed) with a unique
  1 KiB body that is not an envelope;
* ``oversize``: a POST to ``/n`` in one datagram of 63 KiB;
* ``garbage``: random bytes that are not CoAP at all (0 to 1,400 bytes);
* ``enroll_junk``: a POST to ``/enroll`` with a CBOR body that is no request;
* ``fake_oscore``: a request with an OSCORE option naming `kid` (a real
  device's, read off the air) and a ciphertext that is noise;
* ``site_probe``: ``GET /enroll/sites/<asset>`` (the site files, once served to anyone).

Every datagram is unique (a counter in its message id, token and body), so
neither CoAP's de-duplication nor the quarantine's fingerprints fold it away.

    with Flood(("127.0.0.1", 5683), rate=20_000, kid=gateway_kid) as flood:
        ...                                   # honest devices deliver meanwhile
    flood.result                              # {"sent": ..., "seconds": ..., "per_s": ..., "by_attack": {...}}

From a shell::

    python -m hil.flood --target 127.0.0.1:5683 --seconds 60 --rate 20000 --sources 16

What the flood does to honest devices is measured with `HonestProbe`: devices
registered at the lender with OSCORE contexts, each POSTing its next signed
envelope (a gateway's one-envelope batch to ``/t``, a node's envelope to
``/n``), one request in flight, in a thread of their own; every round trip is
kept (`samples`). `rss_mb` reads a process's resident memory.
"""
from __future__ import annotations

import argparse
import asyncio
import enum
import json
import math
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hil.exc import BenchError


class Attack(str, enum.Enum):
    NODE_JUNK = "node_junk"
    OVERSIZE = "oversize"
    GARBAGE = "garbage"
    ENROLL_JUNK = "enroll_junk"
    FAKE_OSCORE = "fake_oscore"
    SITE_PROBE = "site_probe"


# what an attacker who has read the issue would send: mostly the cheapest attack that once hurt the most
DEFAULT_MIX: Mapping[Attack, float] = {
    Attack.NODE_JUNK: 0.55, Attack.GARBAGE: 0.15, Attack.ENROLL_JUNK: 0.1, Attack.FAKE_OSCORE: 0.15,
    Attack.SITE_PROBE: 0.04, Attack.OVERSIZE: 0.01,
}
OVERSIZE_BYTES = 63 * 1024
JUNK_BYTES = 1024
BURST = 64            # datagrams sent back to back between looks at the clock


@dataclass(frozen=True, slots=True)
class FloodPlan:
    """What the attacker sends: where, how fast, from how many addresses, which mix."""

    target: tuple[str, int]
    rate: float | None = 20_000.0
    sources: int = 16
    mix: Mapping[Attack, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    kid: bytes = bytes(8)
    asset: str = "asset-7781"
    seed: int = 19

    def __post_init__(self) -> None:
        if not 1 <= self.sources <= 250:
            raise ValueError("sources must be 1..250 (127.0.0.2 up to 127.0.0.251)")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive (or None: as fast as possible)")
        if not self.mix or any(weight < 0 for weight in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("the mix needs at least one attack with a positive weight")


class Datagrams:
    """Builds each attack's datagrams; pure but for its random source, so a test can look at what is sent."""

    def __init__(self, plan: FloodPlan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.noise = self.rng.randbytes(1 << 17)
        self.counter = 0
        attacks = [a for a, w in plan.mix.items() if w > 0]
        weights = [plan.mix[a] for a in attacks]
        # a fixed deck of 1,000 draws, cycled: the mix holds exactly, and drawing costs nothing per datagram
        self.deck = random.Random(plan.seed).choices(attacks, weights, k=1000)

    def _noise(self, size: int) -> bytes:
        at = self.rng.randrange(len(self.noise) - size) if size < len(self.noise) else 0
        return self.noise[at:at + size]

    def _request(self, code: int, options: bytes, payload: bytes = b"") -> bytes:
        self.counter += 1
        unique = struct.pack(">Q", self.counter)
        header = struct.pack(">BBH", 0x44, code, self.counter & 0xFFFF) + unique[4:]  # CON, token of 4 bytes
        return header + options + (b"\xff" + unique + payload if payload else b"")

    def next(self) -> tuple[Attack, bytes]:
        attack = self.deck[self.counter % len(self.deck)]
        if attack is Attack.NODE_JUNK:  # Uri-Path "n", Content-Format 60
            return attack, self._request(0x02, b"\xb1n\x11\x3c", self._noise(JUNK_BYTES - 8))
        if attack is Attack.OVERSIZE:
            return attack, self._request(0x02, b"\xb1n\x11\x3c", self._noise(OVERSIZE_BYTES))
        if attack is Attack.GARBAGE:
            self.counter += 1
            return attack, struct.pack(">Q", self.counter) + self._noise(self.rng.randrange(0, 1400))
        if attack is Attack.ENROLL_JUNK:  # Uri-Path "enroll", Content-Format 60, a CBOR map of junk
            body = b"\xa2\x01\x58\x40" + self._noise(64) + b"\x02\x18\x2a"
            return attack, self._request(0x02, b"\xb6enroll\x11\x3c", body)
        if attack is Attack.FAKE_OSCORE:  # OSCORE (option 9): flags with kid, a 3-byte partial IV, the kid
            self.counter += 1
            piv = (self.counter & 0xFFFFFF).to_bytes(3, "big")
            value = bytes([0x08 | 3]) + piv + self.plan.kid
            option = bytes([0x90 | len(value)]) if len(value) < 13 else bytes([0x9D, len(value) - 13])
            return attack, self._request(0x02, option + value, self._noise(48))
        asset = self.plan.asset.encode()
        return attack, self._request(0x01, b"\xb6enroll\x05sites" + bytes([len(asset)]) + asset)


def run(plan: FloodPlan, seconds: float) -> dict:
    """Send the flood for `seconds` (in this process); what was sent, by attack, and the rate reached."""
    sockets = []
    for index in range(plan.sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((f"127.0.0.{2 + index}", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sockets.append(sock)
    datagrams = Datagrams(plan)
    sent: dict[str, int] = {attack.value: 0 for attack in Attack}
    total = dropped = 0
    start = time.perf_counter()
    deadline = start + seconds
    try:
        while (now := time.perf_counter()) < deadline:
            if plan.rate is not None:
                due = int((now - start) * plan.rate) - total
                if due <= 0:
                    time.sleep(min(0.001, deadline - now))
                    continue
                count = min(due, BURST)
            else:
                count = BURST
            for _ in range(count):
                attack, datagram = datagrams.next()
                try:
                    sockets[total % len(sockets)].sendto(datagram, plan.target)
                    sent[attack.value] += 1
                except (BlockingIOError, ConnectionRefusedError, OSError):
                    dropped += 1  # a full send buffer or an ICMP error from an earlier datagram: the attacker goes on
                total += 1
    finally:
        for sock in sockets:
            sock.close()
    elapsed = time.perf_counter() - start
    delivered = sum(sent.values())
    return {"sent": delivered, "not_sent": dropped, "seconds": round(elapsed, 3),
            "per_s": round(delivered / elapsed), "by_attack": {k: v for k, v in sent.items() if v}}


class Flood:
    """A `run` in a child process (``python -m hil.flood``): start it, do honest work, `stop()` or let it end."""

    def __init__(self, target: tuple[str, int], *, seconds: float, rate: float | None = 20_000.0, sources: int = 16,
                 kid: bytes = bytes(8), asset: str = "asset-7781", mix: Mapping[Attack, float] | None = None) -> None:
        self.plan = FloodPlan(target, rate, sources, dict(mix or DEFAULT_MIX), kid, asset)
        self.seconds = seconds
        self.process: subprocess.Popen | None = None
        self.result: dict | None = None

    def start(self) -> Flood:
        argv = [sys.executable, "-m", "hil.flood", "--target", f"{self.plan.target[0]}:{self.plan.target[1]}",
                "--seconds", str(self.seconds), "--sources", str(self.plan.sources), "--kid", self.plan.kid.hex(),
                "--asset", self.plan.asset, "--mix", json.dumps({a.value: w for a, w in self.plan.mix.items()})]
        if self.plan.rate is not None:
            argv += ["--rate", str(self.plan.rate)]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def wait(self, timeout: float | None = None) -> dict:
        """Wait for the flood to end; its figures (`run`'s dict)."""
        if self.process is None:
            raise BenchError("the flood was never started")
        try:
            out, err = self.process.communicate(timeout=self.seconds + 30 if timeout is None else timeout)
        except subprocess.TimeoutExpired as exc:
            self.process.kill()
            raise BenchError("the flood did not end in time") from exc
        if self.process.returncode != 0:
            raise BenchError(f"the flood failed ({self.process.returncode}): {err.strip()[-2000:]}")
        self.result = json.loads(out.strip().splitlines()[-1])
        return self.result

    def __enter__(self) -> Flood:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None and exc_info[0] is not None:
            self.process.kill()
        if self.process is not None and self.result is None and exc_info[0] is None:
            self.wait()


@dataclass
class ProbeDevice:
    """An honest device for `HonestProbe`: its id, signing key, OSCORE context directory and path (t or n)."""

    name: str
    identity: object            # telemetry.identity.Identity
    context: Path
    path: str = "t"
    seq: int = 0
    prev: bytes = bytes(16)

    def body(self) -> bytes:
        from telemetry import cbor
        from telemetry.envelope import seal
        from telemetry.senml import Record

        self.seq += 1
        envelope = seal(self.identity, device=self.name, boot=1, seq=self.seq, prev=self.prev,
                        records=[Record("temp", value=4.0 + self.seq % 10 / 10, unit="Cel", time=time.time())])
        self.prev = envelope.digest
        return envelope.raw if self.path == "n" else cbor.encode([envelope.raw])


@dataclass(frozen=True, slots=True)
class RoundTrip:
    at: float              # wall clock, when the answer came (or the wait ended)
    device: str
    ms: float              # the round trip; the timeout when unanswered
    acked: bool            # 2.04 with this envelope's seq stored


class HonestProbe:
    """Honest devices delivering to `uri` at `per_s` requests a second between them, until `stop()`."""

    def __init__(self, uri: str, devices: list[ProbeDevice], *, per_s: float = 20.0, timeout: float = 10.0) -> None:
        self.uri = uri
        self.devices = devices
        self.per_s = per_s
        self.timeout = timeout
        self.samples: list[RoundTrip] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="honest-probe", daemon=True)

    def start(self) -> HonestProbe:
        self._thread.start()
        return self

    def stop(self) -> list[RoundTrip]:
        self._stop.set()
        self._thread.join(self.timeout + 10)
        return self.samples

    @staticmethod
    def post_once(uri: str, device: ProbeDevice, bodies: list[bytes], *, timeout: float = 10.0) -> list:
        """POST each body to `device`'s path over its OSCORE context, one after the other; the responses."""
        import aiocoap
        from aiocoap.numbers import codes

        from durable import oscore

        async def post() -> list:
            client = await aiocoap.Context.create_client_context()
            security = oscore.open_context(device.context)
            client.client_credentials[f"{uri}/{device.path}"] = security
            try:
                return [await asyncio.wait_for(client.request(aiocoap.Message(
                    code=codes.POST, uri=f"{uri}/{device.path}", payload=body, content_format=60)).response, timeout)
                    for body in bodies]
            finally:
                await client.shutdown()
                oscore.close_context(security)

        return asyncio.run(post())

    async def _run(self) -> None:
        import aiocoap
        from aiocoap.numbers import codes

        from durable import oscore
        from telemetry import cbor

        client = await aiocoap.Context.create_client_context()
        securities = []
        for device in self.devices:
            security = oscore.open_context(device.context)
            securities.append(security)
            client.client_credentials[f"{self.uri}/{device.path}"] = security
        try:
            turn = 0
            while not self._stop.is_set():
                device = self.devices[turn % len(self.devices)]
                turn += 1
                request = aiocoap.Message(code=codes.POST, uri=f"{self.uri}/{device.path}", payload=device.body(),
                                          content_format=60)
                started = time.perf_counter()
                acked = False
                try:
                    response = await asyncio.wait_for(client.request(request).response, self.timeout)
                    acked = response.code == codes.CHANGED and device.seq in cbor.decode(response.payload).get(1, [])
                except (asyncio.TimeoutError, aiocoap.error.Error, ValueError):
                    pass
                elapsed = time.perf_counter() - started
                self.samples.append(RoundTrip(time.time(), device.name, elapsed * 1000 if acked else self.timeout * 1000,
                                           acked))
                await asyncio.sleep(max(0.0, 1 / self.per_s - elapsed))
        finally:
            await client.shutdown()
            for security in securities:
                oscore.close_context(security)


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (share 0.99: p99) of `values`."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.flood", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, metavar="HOST:PORT")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=None, help="datagrams/s (default: as fast as possible)")
    parser.add_argument("--sources", type=int, default=16)
    parser.add_argument("--kid", default=bytes(8).hex(), help="the kid fake OSCORE requests name (hex)")
    parser.add_argument("--asset", default="asset-7781")
    parser.add_argument("--mix", default=None, help="JSON {attack: weight}")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    mix = {Attack(k): float(v) for k, v in json.loads(args.mix).items()} if args.mix else dict(DEFAULT_MIX)
    plan = FloodPlan((host, int(port)), args.rate, args.sources, mix, bytes.fromhex(args.kid), args.asset)
    print(json.dumps(run(plan, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
