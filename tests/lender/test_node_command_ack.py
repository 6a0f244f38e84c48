"""The lender's side of commands to nodes (lender.coap.node.with_command): which ack carries which command, and how often.

A real evidence store and CommandDesk; the node's envelopes signed by a real key. The end-to-end path (real firmware
under MicroPython, OSCORE, a simulated modem) is tests/firmware/test_node_commands.py.
"""
from __future__ import annotations

import os

from lender.coap.node import MAX_HANDOUTS, with_command
from lender.enrollment import registration
from lender.evidence.commands import CommandDesk
from lender.evidence.ingest import BatchOutcome, Status
from lender.evidence.log import lender_identity
from lender.evidence.store import SQLiteStore
from telemetry.ack import MAX_NODE_COMMAND, Ack
from telemetry.command import Inspect, Outcome, Permit, outcome_records
from telemetry.envelope import GENESIS, Counters, seal
from telemetry.identity import Identity
from telemetry.receipt import CheckpointReference
from telemetry.senml import Record

NODE = "yard-17"
T = 1767229200


def _report(node: Identity, seq: int, records: list[Record]) -> bytes:
    return seal(node, device=NODE, boot=1, seq=seq, prev=GENESIS, records=records,
                counters=Counters(alarms=0, gaps=0)).raw


def _setup(tmp_path):
    node = Identity(os.urandom(32))
    store = SQLiteStore.open(tmp_path)
    registration.register(store, tmp_path, NODE, node.public_key, with_oscore=False)
    return node, store, CommandDesk(store, lender_identity(tmp_path))


def test_a_node_gets_its_oldest_pending_command_in_the_ack_and_never_beside_an_answer(tmp_path):
    node, store, desk = _setup(tmp_path)
    with store:
        stored = BatchOutcome(Status.CHANGED, stored=(1,), checkpoint=CheckpointReference(1, 2, bytes(32)))
        report = _report(node, 1, [Record("temp", value=4.5, time=T)])
        assert with_command(stored, desk, NODE, report) is stored, "nothing pending: the ack as it was"
        first = desk.inspect(NODE, "staff-ana")
        desk.issue(NODE, Permit("loan-1", T, T + 3600, "release of goods"), "staff-ana")
        ack = Ack.decode(with_command(stored, desk, NODE, report).ack(), [1])
        assert ack.command == first.raw and ack.stored == (1,)
        assert ack.checkpoint is None, "key 6 gives way to the command"
        assert store.issued_commands(NODE)[0].delivered_at is not None
        # the envelope that answers a command gets an ack without one: the node's heap takes one large message
        answer = _report(node, 2, [Record("temp", value=4.5, time=T),
                                   *outcome_records(_verified(desk, first), Outcome.APPLIED, T)])
        assert with_command(BatchOutcome(Status.CHANGED, stored=(2,)), desk, NODE, answer).ack() == \
            BatchOutcome(Status.CHANGED, stored=(2,)).ack()
        # a refused request, or an ack that settles nothing, never carries one
        assert with_command(BatchOutcome(Status.BAD_REQUEST, "bad"), desk, NODE, report).status is Status.BAD_REQUEST
        assert Ack.decode(with_command(BatchOutcome(Status.CHANGED), desk, NODE, report).ack(), [1]).command is None


def _verified(desk: CommandDesk, issued):
    from telemetry.command import Command

    return Command.verify(issued.raw, desk.lender.public_key)


def test_a_command_is_handed_out_a_bounded_number_of_times_and_one_too_large_for_a_node_never(tmp_path):
    node, store, desk = _setup(tmp_path)
    with store:
        report = _report(node, 1, [Record("temp", value=4.5, time=T)])
        big = desk.inspect(NODE, "staff-ana", tuple(f"asset-{i:02d}-" + "x" * 40 for i in range(8)))
        assert len(big.raw) > MAX_NODE_COMMAND
        small = desk.inspect(NODE, "staff-ana")
        handouts: dict = {}
        carried = [Ack.decode(with_command(BatchOutcome(Status.CHANGED, already=(1,)), desk, NODE, report,
                                           handouts).ack(), [1]).command for _ in range(MAX_HANDOUTS + 2)]
        assert carried == [small.raw] * MAX_HANDOUTS + [None, None], "the large one skipped, the small one bounded"


def test_a_command_too_large_for_a_node_is_refused_when_issued_and_a_node_is_told_apart_from_a_gateway(tmp_path):
    from lender.evidence.commands import answers_at_next_wake
    from lender.evidence.ingest import Ingest
    from telemetry.exc import CommandError
    from tests.kit.lender import batch

    node, store, desk = _setup(tmp_path)
    with store:
        assets = tuple(f"asset-{i:02d}-" + "x" * 40 for i in range(8))
        assert not answers_at_next_wake(store, NODE), "nothing received yet: treated as a gateway"
        gateway_sized = desk.inspect(NODE, "staff-ana", assets)     # a gateway takes a large command from /c
        assert len(gateway_sized.raw) > MAX_NODE_COMMAND
        reading = Record("temp", unit="Cel", value=4.5, time=T)
        v3 = seal(node, device=NODE, boot=1, seq=1, prev=GENESIS, records=[reading],
                  counters=Counters(alarms=0, gaps=0), compact=True)
        assert Ingest(store).batch(batch([v3]), peer="test").stored == (1,)
        assert answers_at_next_wake(store, NODE), "a version 3 envelope: a node"
        kept = len(store.issued_commands(NODE))
        try:
            desk.inspect(NODE, "staff-ana", assets)
        except CommandError as exc:
            assert "node" in str(exc) and str(MAX_NODE_COMMAND) in str(exc)
        else:
            raise AssertionError("a command no ack can carry was issued to a node")
        assert len(store.issued_commands(NODE)) == kept, "nothing kept for it"
        assert len(desk.inspect(NODE, "staff-ana").raw) <= MAX_NODE_COMMAND     # a small one still goes
