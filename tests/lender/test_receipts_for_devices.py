"""Receipts for devices: what a gateway and a node get back proves delivery on its own, after the lender is gone."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil

from aiocoap.numbers import codes

from lender.evidence.ingest import NodeIngest
from lender.evidence.log import lender_identity
from telemetry.ack import Ack
from telemetry.receipt import SignedCheckpoint, verify_inclusion_receipt
from tests.kit.evidence import EvidenceLender
from tests.kit.lender import Device, LenderThread, RawCoap, batch, enroll


def test_a_gateways_receipt_proves_delivery_after_the_lender_is_stopped_and_its_store_deleted(data_dir, store):
    gateway = Device("gw-1")
    enroll(store, data_dir, gateway)
    key = lender_identity(data_dir).public_key   # what the gateway's owner pinned at enrollment
    envelopes = gateway.chain(6)
    with LenderThread(data_dir, insecure=True) as running:
        client = RawCoap(running.port)
        try:
            answer = client.post(batch(envelopes))
        finally:
            client.close()
    assert answer.code == codes.CHANGED
    ack = Ack.decode(answer.payload, [e.seq for e in envelopes])
    kept = (ack.receipt, envelopes[-1].raw)   # what the gateway keeps with its chain head
    store.close()
    shutil.rmtree(data_dir)   # the lender is stopped and its store is gone
    receipt, raw = kept
    checkpoint, index = receipt.verify("gw-1", raw, key)
    assert (receipt.seq, index, checkpoint.tree_size) == (6, 6, 7)   # its registration, then six envelopes


def test_a_node_gets_a_checkpoint_reference_and_its_owner_the_full_receipt_from_the_lender(tmp_path):
    lender = EvidenceLender(tmp_path / "lender")
    try:
        node = Device("yard-3")
        enroll(lender.store, lender.data_dir, node)
        envelope = node.next()
        outcome = NodeIngest(lender.store).envelope(envelope.raw, peer="198.51.100.9:5683")
        reference = Ack.decode(outcome.ack(), [envelope.seq]).checkpoint
        assert outcome.receipt is None and reference.index == 1 and reference.tree_size == 2
        code, out, _ = lender.cli("receipt", "--device", "yard-3", "--seq", "1")
        shown = json.loads(out)
        assert code == 0 and shown["index"] == reference.index
        checkpoint, index = verify_inclusion_receipt(base64.b64decode(shown["receipt_b64"]),
                                                     base64.b64decode(shown["entry_b64"]), lender.key)
        signed = SignedCheckpoint.decode(lender.store.log.signed_checkpoint(reference.tree_size).encode(), lender.key)
        assert hashlib.sha256(signed.encode()).digest() == reference.digest and signed.checkpoint.root == checkpoint.root
    finally:
        lender.close()
