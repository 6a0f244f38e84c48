"""`pledgewatch lender migrate`: a SQLite lender moved into PostgreSQL, verified, run again, then served by workers."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess

from aiocoap.numbers import codes

from lender.evidence.ingest import Ingest
from lender.evidence.store import Review, SQLiteStore
from lender.evidence.stores import open_store
from telemetry.envelope import Gap, GapReason
from tests.kit.lender import PYTHON_BIN, Device, batch, enroll, free_environment
from tests.kit.workers import ProtectedGateway

PLEDGEWATCH = str(PYTHON_BIN / "pledgewatch")


def lender(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PLEDGEWATCH, "lender", *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=free_environment())


def test_a_sqlite_lender_moves_to_postgresql_verified_again_and_again_and_workers_serve_it_on(postgres, data_dir):
    url = postgres.database()
    gateway = Device("gw-a")
    with SQLiteStore.open(data_dir) as store:
        registration = enroll(store, data_dir, gateway, oscore=True, asset="press-7")
        ingest = Ingest(store)
        ingest.batch(batch(gateway.chain(20)), peer="site")
        ingest.batch(batch([gateway.next(gap=Gap(GapReason.OVERFLOW.value, first=21, last=22, count=2))]), peer="site")
        ingest.batch(b"\x01not a batch", peer="stranger")
        store.add_review(Review("gw-a", 21, "ana", "overflow during the outage", 1_800_000_000.0))
        before = store.checkpoint()

    first = lender("migrate", "--from", data_dir, "--to", url, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["ok"] and report["problems"] == [] and report["oscore_contexts_moved"] == 1
    assert report["counts"]["envelopes"] == {"source": 21, "target": 21}
    assert report["counts"]["log_entries"]["source"] == report["counts"]["log_entries"]["target"] == before.checkpoint.tree_size
    assert report["log"]["root_hex"] == before.checkpoint.root.hex()
    assert report["log"]["entries_audited"] == before.checkpoint.tree_size
    again = json.loads(lender("migrate", "--from", data_dir, "--to", url, "--json").stdout)
    assert again["ok"] and not any(again["added"].values()) and again["oscore_contexts_moved"] == 0
    assert '"moved-to"' in (data_dir / "oscore" / "gw-a" / "sequence.json").read_text()  # retired on disk

    status = lender("status", "--data", data_dir, "--store", url, "--device", "gw-a", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)[0]["last_seq"] == 21

    serving = subprocess.Popen([PLEDGEWATCH, "lender", "serve", "--data", str(data_dir), "--store", url,
                                "--bind", "127.0.0.1:0", "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=free_environment())
    try:
        line = serving.stdout.readline()
        found = re.search(r"coap://127\.0\.0\.1:(\d+)/t with 2 workers", line)
        assert found, (line, serving.stderr.read() if serving.poll() is not None else "")
        client = ProtectedGateway(gateway, registration.device_context, f"coap://127.0.0.1:{found.group(1)}/t")

        async def send():
            await client.open()
            try:
                return await client.send(gateway.chain(3), timeout=10)
            finally:
                await client.close()

        answer = asyncio.run(send())
        assert answer.code == codes.CHANGED and answer.stored == (22, 23, 24)
    finally:
        serving.send_signal(signal.SIGTERM)
        out, err = serving.communicate(timeout=60)
    assert serving.returncode == 0 and "lender: stopped" in out, err
    with open_store(data_dir, url) as moved:
        assert [e.seq for e in moved.envelopes("gw-a")] == list(range(1, 25))
        assert moved.log.audit().ok and moved.checkpoint().checkpoint.tree_size == before.checkpoint.tree_size + 3
        assert moved.log.signed_checkpoint(before.checkpoint.tree_size).encode() == before.encode()
