"""Several lender workers over one PostgreSQL store: any worker serves any device, and faults lose nothing acked.

Real processes (lender.workers: a forkserver, SO_REUSEPORT on one UDP port),
a real PostgreSQL (tests.kit.postgres), gateways speaking OSCORE with the
contexts `lender register` made (tests.kit.workers).
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest
from aiocoap.numbers import codes

from lender.evidence.postgres import OscoreStateTable
from lender.evidence.stores import open_store
from lender.workers import WorkerConfig, WorkerGroup
from tests.kit.lender import Device, LenderThread, enroll
from tests.kit.workers import ProtectedGateway


@pytest.fixture
def shared(postgres, data_dir):
    """A fresh PostgreSQL store (its URL) with the lender's keys in `data_dir`."""
    url = postgres.database()
    open_store(data_dir, url).close()
    return url


def gateways(store, data_dir, uri: str, count: int) -> list[ProtectedGateway]:
    made = []
    for n in range(count):
        device = Device(f"gw-{n}")
        registration = enroll(store, data_dir, device, oscore=True)
        made.append(ProtectedGateway(device, registration.device_context, uri))
    return made


def test_sender_numbers_are_reserved_apart_and_a_request_number_is_accepted_once_across_workers(shared, data_dir):
    with open_store(data_dir, shared) as store:
        (gateway,) = gateways(store, data_dir, "coap://127.0.0.1/t", 1)
    one, two = OscoreStateTable(shared), OscoreStateTable(shared)
    try:
        from lender.enrollment.shared import SharedCredentials

        SharedCredentials(one, data_dir / "oscore").add("gw-0")  # adopts the context registration wrote
        blocks = [table.reserve("gw-0", 32) for _ in range(5) for table in (one, two)]
        numbers = [n for first in blocks for n in range(first, first + 32)]
        assert len(numbers) == len(set(numbers))  # no number ever handed to two workers
        assert one.restart_window("gw-0", 7) == "ok"  # a request an Echo proved fresh starts the window
        assert [one.strike("gw-0", 8), two.strike("gw-0", 8)] == ["ok", "replay"]
        assert two.strike("gw-0", 5) == "replay" and two.strike("gw-0", 40) == "ok" and one.strike("gw-0", 8) == "replay"
    finally:
        one.close()
        two.close()


def test_a_device_whose_address_changes_is_served_by_any_worker_without_a_401(shared, data_dir):
    config = WorkerConfig(data_dir, shared, ("127.0.0.1", 0))
    with open_store(data_dir, shared) as store:
        with WorkerGroup(config, 2) as group:
            (gateway,) = gateways(store, data_dir, f"coap://127.0.0.1:{group.port}/t", 1)

            async def run() -> list:
                await gateway.open()
                answers = []
                try:
                    for _ in range(12):  # a new source port each time: the kernel hashes it to either worker
                        answers.append(await gateway.send(gateway.device.chain(2)))
                        await gateway.rebind()
                finally:
                    await gateway.close()
                return answers

            answers = asyncio.run(run())
        assert [a.code for a in answers] == [codes.CHANGED] * 12
        assert sorted(gateway.acked) == list(range(1, 25))
        # only the first request, whose window was new to the shared store, was asked for an Echo: that 4.01 is
        # the one response with a lender sequence number (one block reserved); no worker answered 4.01 after it
        (reserved,), = store.connection().execute(
            "SELECT sender_next FROM oscore_contexts WHERE device = 'gw-0'").fetchall()
        assert reserved == 32


@pytest.mark.slow
def test_killing_workers_mid_batch_50_times_loses_nothing_acked_and_stores_nothing_twice(shared, data_dir):
    config = WorkerConfig(data_dir, shared, ("127.0.0.1", 0))
    batch_size, kills = 3, 50
    with open_store(data_dir, shared) as store:
        with WorkerGroup(config, 2) as group:
            fleet = gateways(store, data_dir, f"coap://127.0.0.1:{group.port}/t", 4)
            killed = asyncio.Event()

            async def deliver(gateway: ProtectedGateway) -> None:
                await gateway.open()
                try:
                    pending = []
                    while pending or not killed.is_set():  # small batches for as long as the workers are killed
                        if not pending:
                            pending = gateway.device.chain(batch_size)
                        answer = await gateway.send(pending, timeout=1.0)
                        if answer.code == codes.CHANGED:
                            pending = [e for e in pending if e.seq not in gateway.acked]
                        else:  # killed mid-request, replayed on the other worker, 5.03: a new request, as the agent
                            await asyncio.sleep(0.05)
                finally:
                    await gateway.close()

            async def killer() -> None:
                done = 0
                while done < kills:
                    await asyncio.sleep(random.uniform(0.05, 0.2))
                    living = group.pids()
                    if len(living) < 2:
                        continue  # let the supervisor bring the other one back first
                    os.kill(random.choice(living), signal.SIGKILL)
                    done += 1
                killed.set()

            async def run() -> None:
                await asyncio.gather(killer(), *(deliver(g) for g in fleet))

            asyncio.run(run())
            assert group.restarts >= kills - 1
    with open_store(data_dir, shared) as store:
        total = 0
        for gateway in fleet:
            stored = [e.seq for e in store.envelopes(gateway.device.name)]
            assert stored == list(range(1, gateway.device.seq + 1))  # every envelope, each once
            assert gateway.acked == set(stored)  # nothing acked is missing
            total += len(stored)
        counts = store.counts()
        assert counts.envelopes == counts.records == total
        audit = store.log.audit()
        assert audit.ok and audit.entries == len(fleet) + total  # one order: registrations, then every envelope


def test_a_postgresql_restart_is_answered_503_with_max_age_and_recovered_from(postgres, shared, data_dir):
    with open_store(data_dir, shared) as store:
        with LenderThread(data_dir, store_url=shared) as lender:
            (gateway,) = gateways(store, data_dir, lender.uri, 1)

            async def run() -> tuple:
                await gateway.open()
                try:
                    before = await gateway.send(gateway.device.chain(3))
                    postgres.kill()
                    envelopes = gateway.device.chain(3)
                    down = await gateway.send(envelopes)
                    postgres.start()
                    deadline = time.monotonic() + 20
                    after = await gateway.send(envelopes)
                    while after.code != codes.CHANGED and time.monotonic() < deadline:
                        await asyncio.sleep(0.2)
                        after = await gateway.send(envelopes)
                    return before, down, after
                finally:
                    await gateway.close()

            before, down, after = asyncio.run(run())
    assert before.stored == (1, 2, 3)
    assert down.code == codes.SERVICE_UNAVAILABLE and down.max_age and down.max_age > 0
    assert after.code == codes.CHANGED and after.stored == (4, 5, 6)
    with open_store(data_dir, shared) as store:
        assert [e.seq for e in store.envelopes("gw-0")] == [1, 2, 3, 4, 5, 6] and store.log.audit().ok
