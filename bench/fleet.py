"""`python -m bench fleet`: a fleet of gateways against a real lender — SQLite, PostgreSQL with 1 and 2 workers, one run.

Each simulated gateway has its own Ed25519 key, its own OSCORE context and
its own UDP socket (its own source port, as behind its own NAT: the kernel's
SO_REUSEPORT group spreads them over the workers). What costs the gateways
CPU is done before the clock starts, so this process measures the lender,
not itself: every envelope is signed once (the same chains serve all three
lenders), and every request is protected with the gateway's OSCORE context
ahead of time; during the measurement the fleet only sends datagrams and
notes when each answer came. Answers are unprotected and their acks read
afterwards. A request is a NON POST of one batch to /t (one datagram, as
the agent sends batches on a lossy link); `WINDOW` requests are in flight
at once (a closed loop, below the lender's ingest queue, so the rate is the
lender's sustained one and not a measure of dropped datagrams); one not
answered within `RESEND_AFTER` is sent again (the same datagram).

Each lender is `pledgewatch lender serve` in its own process(es), fresh:
SQLite in a temporary data directory, and PostgreSQL (a throwaway server
with fsync on, as production, reached over its Unix socket as on a single
host) through ``--store`` with ``--workers 1`` and ``2``. Registration (keys and OSCORE contexts for every gateway) is done
before the lender starts and is not measured.

Figures: the sustained rate, envelopes acked per second over the rounds
after the first (in the first, every gateway's first request makes the
lender read its registry row and its chain's neighbours; each round's rate
is listed too), ack latency percentiles (send to answer, queueing
included), datagrams sent again, and `lost` (envelopes never acked: must
be 0), plus the capacity arithmetic: gateways reporting once a minute and
nodes reporting every 15 minutes that one worker core carries at the
measured rate.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiocoap
from aiocoap.numbers import codes
from aiocoap.oscore import (
    CanProtect,
    CanUnprotect,
    ReplayWindow,
    SecurityContextUtils,
    algorithms,
    hashfunctions,
)

from durable.oscore import ALGORITHM, KDF_HASH, ContextParameters, write_context
from lender.enrollment.contexts import LENDER_SENDER_ID
from lender.evidence.registry import Device
from lender.evidence.stores import open_store
from telemetry import cbor
from telemetry.envelope import GENESIS, seal
from telemetry.identity import Identity
from telemetry.senml import Record

DEVICES = int(os.environ.get("FLEET_DEVICES", "2000"))
BATCHES = int(os.environ.get("FLEET_BATCHES", "4"))        # batches each gateway sends per lender (one per round)
WARMUP = 1                   # first rounds not in the sustained rate: each gateway's first request reads its state
BATCH = int(os.environ.get("FLEET_BATCH", "8"))            # envelopes per batch (a minute of a busy gateway)
WINDOW = int(os.environ.get("FLEET_WINDOW", "32"))         # requests in flight at once
RESEND_AFTER = 5.0
GATEWAY_PERIOD_S = 60.0      # the capacity arithmetic: a gateway's batch a minute ...
NODE_PERIOD_S = 900.0        # ... a node's one envelope every 15 minutes
PYTHON = sys.executable
_SERVING = re.compile(r"coap://127\.0\.0\.1:(\d+)/t")


class _GatewayContext(CanProtect, CanUnprotect, SecurityContextUtils):
    """The gateway's side of its OSCORE context, in memory (the bench never restarts a gateway)."""

    def __init__(self, params: ContextParameters) -> None:
        self.sender_id, self.recipient_id, self.id_context = params.sender_id, params.recipient_id, None
        self.alg_aead = algorithms[ALGORITHM]
        self.hashfun = hashfunctions[KDF_HASH]
        self.derive_keys(params.master_salt, params.master_secret)
        self.sender_sequence_number = 0
        self.recipient_replay_window = ReplayWindow(32, lambda: None)
        self.recipient_replay_window.initialize_empty()
        self.echo_recovery = None

    def post_seqnoincrease(self) -> None:
        pass


def _records(seq: int, at: float) -> list[Record]:
    return [Record("temp", value=20.0 + seq % 40 / 4, unit="Cel", time=at), Record("door", boolean=False, time=at),
            Record("tamper", boolean=False, time=at)]


def fleet(count: int) -> tuple[list[Identity], list[list[bytes]]]:
    """Every gateway's key and its batches (bodies of POST /t), signed once for all the lenders."""
    identities, bodies = [], []
    now = time.time()
    for n in range(count):
        identity = Identity.generate()
        prev, batches, seq = GENESIS, [], 0
        for _ in range(BATCHES):
            envelopes = []
            for _ in range(BATCH):
                seq += 1
                envelope = seal(identity, device=f"gw-{n:05d}", boot=1, seq=seq, prev=prev, records=_records(seq, now))
                prev = envelope.digest
                envelopes.append(envelope.raw)
            batches.append(cbor.encode(envelopes))
        identities.append(identity)
        bodies.append(batches)
    return identities, bodies


def register(data: Path, url: str | None, identities: list[Identity]) -> list[ContextParameters]:
    """Register every gateway with a fresh OSCORE context (the lender's side on disk, or in the shared store)."""
    device_sides = []
    rows = []
    with open_store(data, url) as store, store.transaction():
        for n, identity in enumerate(identities):
            name = f"gw-{n:05d}"
            lender_side = ContextParameters.generate(LENDER_SENDER_ID, n.to_bytes(2, "big"))
            store.add_device(Device(name, identity.public_key, registered_at=time.time(), asset=f"asset-{n}",
                                    oscore_context=f"oscore/{name}", oscore_id=lender_side.recipient_id))
            if url is None:
                write_context(data / "oscore" / name, lender_side)
            else:
                rows.append((name, lender_side))
            device_sides.append(lender_side.for_peer())
    if rows:
        _shared_contexts(url, rows)
    return device_sides


def _shared_contexts(url: str, rows: list) -> None:
    """The lender's sides in the shared store, their windows started (as a fresh context on disk starts empty)."""
    from lender.evidence.postgres import OscoreRow, OscoreStateTable

    table = OscoreStateTable(url)
    try:
        for name, side in rows:
            table.add(OscoreRow(name, side.sender_id, side.recipient_id, side.master_secret, side.master_salt,
                                ALGORITHM, KDF_HASH), 0)
        table.connection().execute("UPDATE oscore_contexts SET window_epoch = %s, window_index = 0, window_bits = 0",
                                   (table.epoch,))
    finally:
        table.close()


def protect(sides: list[ContextParameters], bodies: list[list[bytes]]) -> list[tuple]:
    """Every request as its datagram, in sending order (round robin over the fleet), with what reads its answer."""
    contexts = [_GatewayContext(side) for side in sides]
    requests = []
    for round_ in range(BATCHES):
        for n, context in enumerate(contexts):
            message = aiocoap.Message(mtype=aiocoap.NON, code=codes.POST, uri_path=("t",), payload=bodies[n][round_],
                                      content_format=60)
            message.direction = aiocoap.message.Direction.OUTGOING
            outer, request_id = context.protect(message)
            outer.mtype, outer.mid = aiocoap.NON, random.randrange(1 << 16)
            outer.token = os.urandom(4)
            requests.append((n, outer.encode(), outer.token, context, request_id))
    return requests


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, answers: dict) -> None:
        self.answers = answers

    def datagram_received(self, data: bytes, address) -> None:
        token_length = data[0] & 0x0F
        token = data[4:4 + token_length]
        self.answers.setdefault(token, (time.perf_counter(), data))


async def drive(port: int, requests: list[tuple]) -> dict:
    """Send `requests` with `WINDOW` in flight; return the answers by token, when each was sent, and how long it took."""
    loop = asyncio.get_running_loop()
    answers: dict[bytes, tuple[float, bytes]] = {}
    sockets = {}
    for n in {r[0] for r in requests}:
        transport, _ = await loop.create_datagram_endpoint(lambda: _Socket(answers), local_addr=("127.0.0.1", 0))
        sockets[n] = transport
    sent: dict[bytes, float] = {}
    resent = 0
    slots = asyncio.Semaphore(WINDOW)

    async def one(n: int, datagram: bytes, token: bytes) -> None:
        nonlocal resent
        async with slots:
            sent[token] = last = time.perf_counter()
            sockets[n].sendto(datagram, ("127.0.0.1", port))
            while token not in answers:
                await asyncio.sleep(0.001)
                if time.perf_counter() - last > RESEND_AFTER:
                    if last - sent[token] > 5 * RESEND_AFTER:
                        return  # lost
                    sockets[n].sendto(datagram, ("127.0.0.1", port))
                    resent += 1
                    last = time.perf_counter()

    started = time.perf_counter()
    await asyncio.gather(*(one(n, datagram, token) for n, datagram, token, _, _ in requests))
    finished = max((answers[t][0] for t in sent if t in answers), default=started)
    for transport in sockets.values():
        transport.close()
    return {"answers": answers, "sent": sent, "seconds": finished - started, "resent": resent}


def read_answers(requests: list[tuple], runs: list[dict]) -> dict:
    """The acks in the answers of every round a lender was driven, and its sustained rate: the envelopes acked in
    the rounds after the warm-up over the time those rounds took (the first round is reported apart)."""
    answers = {token: answer for run in runs for token, answer in run["answers"].items()}
    sent = {token: at for run in runs for token, at in run["sent"].items()}
    acked, latencies, seen = 0, [], {}
    for n, _, token, context, request_id in requests:
        if token not in answers:
            continue
        at, data = answers[token]
        latencies.append((at - sent[token]) * 1000)
        message = aiocoap.Message.decode(data)
        message.direction = aiocoap.message.Direction.INCOMING
        try:
            plain, _ = context.unprotect(message, request_id)
        except Exception:  # an unprotected refusal (a 5.03 of a full lane, say): not acked
            seen[f"unprotected {message.code}"] = seen.get(f"unprotected {message.code}", 0) + 1
            continue
        seen[str(plain.code)] = seen.get(str(plain.code), 0) + 1
        if plain.code == codes.CHANGED:
            ack = cbor.decode(plain.payload)
            acked += len(ack.get(1, [])) + len(ack.get(2, []))
    seconds = sum(run["seconds"] for run in runs[WARMUP:])
    rounds = [round(_acked(run, requests) / run["seconds"]) if run["seconds"] else 0 for run in runs]
    latencies.sort()
    return {"envelopes_per_s": round(sum(_acked(run, requests) for run in runs[WARMUP:]) / seconds) if seconds else 0,
            "rounds_envelopes_per_s": rounds, "acked": acked,
            "lost": len(requests) * BATCH - acked,
            "ack_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
            "ack_ms_p99": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 1) if latencies else None,
            "resent": sum(run["resent"] for run in runs), "seconds": round(seconds, 2), "answers": seen}


def _acked(run: dict, requests: list[tuple]) -> int:
    """Envelopes acked in one round's answers (each answered request acked its whole batch: checked above)."""
    by_token = {token: (context, request_id) for _, _, token, context, request_id in requests}
    acked = 0
    for token in run["sent"]:
        if token in run["answers"]:
            message = aiocoap.Message.decode(run["answers"][token][1])
            message.direction = aiocoap.message.Direction.INCOMING
            context, request_id = by_token[token]
            try:
                plain, _ = context.unprotect(message, request_id)
            except Exception:
                continue
            if plain.code == codes.CHANGED:
                ack = cbor.decode(plain.payload)
                acked += len(ack.get(1, [])) + len(ack.get(2, []))
    return acked


class _Lender:
    """`pledgewatch lender serve` in its own process group, with the port it printed."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.process = subprocess.Popen([PYTHON, "-m", "pledgewatch", "lender", "serve", "--data", str(data),
                                         "--bind", "127.0.0.1:0", *extra], stdout=subprocess.PIPE,
                                        stderr=open(data.parent / f"{data.name}.log", "w"), text=True,
                                        start_new_session=True)
        line = self.process.stdout.readline()
        found = _SERVING.search(line)
        if not found:
            self.stop()
            raise RuntimeError(f"the lender did not start: {line!r} (log: {data.parent / f'{data.name}.log'})")
        self.port = int(found.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def main() -> None:
    from tests.kit.postgres import PostgresServer  # the same throwaway server the tests use

    identities, bodies = fleet(DEVICES)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, PostgresServer(fsync=True) as postgres:
        root = Path(tmp)
        # the lender on the database's host, over its Unix socket (as docs/deployment.md's single host)
        setups = {"sqlite": (None, 1), "postgres_1": (postgres.database(unix_socket=True), 1),
                  "postgres_2": (postgres.database(unix_socket=True), 2)}
        requests, lenders, runs = {}, {}, {name: [] for name in setups}
        try:
            for name, (url, workers) in setups.items():
                requests[name] = protect(register(root / name, url, identities), bodies)
                lenders[name] = _Lender(root / name, *([] if url is None else ["--store", url, "--workers",
                                                                              str(workers)]))
            # the lenders take turns, one round (a batch from every gateway) at a time, so that what else this
            # shared machine does weighs on each of them alike
            for round_ in range(BATCHES):
                for name, lender in lenders.items():
                    part = requests[name][round_ * DEVICES:(round_ + 1) * DEVICES]
                    runs[name].append(asyncio.run(drive(lender.port, part)))
        finally:
            for lender in lenders.values():
                lender.stop()
        results = {name: read_answers(requests[name], runs[name]) for name in setups}
        for name, (url, _) in setups.items():
            with open_store(root / name, url) as store:
                results[name]["stored"] = store.counts().envelopes
    one_core = results["postgres_1"]["envelopes_per_s"]
    print(json.dumps({
        "devices": DEVICES, "batches_per_device": BATCHES, "envelopes_per_batch": BATCH, "in_flight": WINDOW,
        "sqlite_envelopes_per_s": results["sqlite"]["envelopes_per_s"],
        "postgres_envelopes_per_s_1_worker": one_core,
        "postgres_envelopes_per_s_2_workers": results["postgres_2"]["envelopes_per_s"],
        "postgres_1_worker_over_sqlite": round(one_core / max(1, results["sqlite"]["envelopes_per_s"]), 3),
        "ack_ms_p50": max(r["ack_ms_p50"] or 0 for r in results.values()),
        "ack_ms_p99": max(r["ack_ms_p99"] or 0 for r in results.values()),
        "lost": sum(r["lost"] for r in results.values()),
        "capacity_one_worker": {
            "gateways_at_one_batch_a_minute": round(one_core / BATCH * GATEWAY_PERIOD_S),
            "nodes_at_one_envelope_per_15_min": round(one_core * NODE_PERIOD_S),
        },
        "runs": results,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }, indent=1))


if __name__ == "__main__":
    main()
