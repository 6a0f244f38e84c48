"""The gateway keeps the lender's latest receipt with its chain head: after the lender is stopped and its store
deleted, the receipt in the agent's state file still proves, with the lender's key alone, what the lender received."""
from __future__ import annotations

import asyncio
import shutil

import pytest

from agent.spool import Spool
from agent.state import AgentState
from agent.uplink import Result, Uplink, UplinkConfig
from lender.enrollment.registration import register
from lender.evidence.log import lender_identity
from lender.evidence.store import SQLiteStore
from lender.server import LenderServer
from telemetry.exc import ReceiptError
from telemetry.receipt import DeliveryReceipt
from tests.kit.uplink import DEVICE, GATEWAY, chain

FAST_COAP = {"ack_timeout": 0.05, "max_retransmit": 1}


def test_the_receipt_a_gateway_keeps_proves_delivery_after_the_lender_and_its_store_are_gone(tmp_path):
    envelopes = chain(25)
    with SQLiteStore.open(tmp_path / "lender") as store:
        register(store, tmp_path / "lender", DEVICE, GATEWAY.public_key, device_context=tmp_path / "device")
    lender_key = lender_identity(tmp_path / "lender").public_key   # pinned by the gateway's owner at enrollment

    async def deliver():
        async with LenderServer(tmp_path / "lender", bind=("127.0.0.1", 0)) as lender:
            config = UplinkConfig(lender=f"coap://127.0.0.1:{lender.address[1]}", security_context=tmp_path / "device",
                                  max_batch_count=10, **FAST_COAP)
            with Spool.open(tmp_path / "spool.db", synchronous="NORMAL") as spool, \
                    AgentState.open(tmp_path / "state.json") as state:
                for envelope in envelopes:
                    spool.append(envelope)
                async with Uplink(config, spool, receipts=state) as uplink:
                    return [(await uplink.send_once()).result for _ in range(3)]

    assert asyncio.run(deliver()) == [Result.DELIVERED] * 3
    shutil.rmtree(tmp_path / "lender")   # the lender stopped; its store, checkpoints and keys are gone
    with AgentState.open(tmp_path / "state.json") as state:
        receipt, envelope = state.latest_receipt
    assert receipt.seq == 25 and envelope == envelopes[-1].raw
    checkpoint, index = receipt.verify(DEVICE, envelope, lender_key)
    assert (index, checkpoint.tree_size) == (25, 26)   # its registration, then 25 envelopes
    with pytest.raises(ReceiptError):
        receipt.verify(DEVICE, envelopes[-2].raw, lender_key)


def test_only_a_newer_receipt_replaces_the_one_kept(tmp_path):
    with AgentState.open(tmp_path / "state.json") as state:
        assert state.latest_receipt is None
        assert state.keep_receipt(DeliveryReceipt(7, 1, b"\xd2receipt-7"), b"envelope-7")
        assert not state.keep_receipt(DeliveryReceipt(5, 2, b"\xd2receipt-5"), b"envelope-5")
    with AgentState.open(tmp_path / "state.json") as state:   # it survives a restart, whole
        receipt, envelope = state.latest_receipt
        assert (receipt.seq, receipt.receipt, envelope) == (7, b"\xd2receipt-7", b"envelope-7")
