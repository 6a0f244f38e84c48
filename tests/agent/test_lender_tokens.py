"""Freshness from the lender: the token in each ack goes into every envelope the gateway signs after it.

The story: a gateway starts (no token yet), delivers its first batch to a
real lender, which answers with a fresh token; from then on every envelope
carries the newest token, across restarts, and an older token never replaces
a newer one. Every envelope also names the enrollment the gateway is bound to.
"""
from __future__ import annotations

import asyncio
import stat
import time

from agent.freshness import TOKEN_FILE, LenderTokens
from lender.evidence.tokens import token_key
from telemetry.freshness import issue_token, token_genuine, token_time
from telemetry.senml import Record
from tests.kit.agent import (DEVICE, QUICK_UPLINK, build_agent, registered_lender, running, signed_envelopes,
                             stored_at_lender)

KEY = bytes(range(32))
T0 = 1_767_225_600


def reading(value: float = 4.5) -> Record:
    return Record("temp", value=value, unit="Cel", time=time.time())


async def until(condition, timeout: float = 10.0) -> None:
    """Wait for `condition()` (a guard against hangs, not a timing assertion)."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


def test_the_token_in_an_ack_goes_into_every_envelope_signed_after_it(tmp_path):
    data, gateway = tmp_path / "lender", tmp_path / "gateway"
    gateway.mkdir()
    with registered_lender(data) as lender:
        agent = build_agent(gateway, lender=f"coap://127.0.0.1:{lender.port}", uplink=QUICK_UPLINK)

        async def story():
            await until(lambda: agent.tokens.token is not None)  # the manifest was delivered and acked
            first = agent.tokens.token
            after = [agent.record([reading(v)]) for v in (1.0, 2.0)]
            await until(lambda: len(agent.spool) == 0)
            return first, after

        first, after = asyncio.run(running(agent, story))
        agent.spool.close(), agent.state.close()
        stored = stored_at_lender(data)
    manifest = stored[0]
    assert manifest.version == 2 and manifest.token is None  # signed at start, before any ack
    assert [e.token for e in after] == [first, first]
    assert token_genuine(token_key(data, create=False), DEVICE, after[-1].token)  # one the lender issued to us
    assert abs(token_time(after[-1].token) - time.time()) < 60
    assert {e.seq for e in after} <= {e.seq for e in stored}
    # the token is kept in the state directory and carried again after a restart, before any new ack
    path = gateway / TOKEN_FILE
    assert path.read_bytes() == agent.tokens.token and stat.S_IMODE(path.stat().st_mode) == 0o600
    restarted = build_agent(gateway, recording=True)
    assert restarted.recorder.record([reading()]).token == agent.tokens.token


def test_the_newest_token_is_kept_and_an_older_one_never_replaces_it(tmp_path):
    tokens = LenderTokens(tmp_path / TOKEN_FILE)
    assert tokens.token is None and tokens.time is None
    newer, older = issue_token(KEY, DEVICE, T0 + 60), issue_token(KEY, DEVICE, T0)
    assert tokens.offer(newer, round_trip=0.1) is True
    assert tokens.offer(older, round_trip=0.1) is False  # an ack delayed on the way
    assert tokens.token == newer and LenderTokens(tmp_path / TOKEN_FILE).token == newer
    latest = issue_token(KEY, DEVICE, T0 + 120)
    assert tokens.offer(latest, round_trip=0.1) is True and LenderTokens(tmp_path / TOKEN_FILE).time == T0 + 120


def test_a_damaged_token_file_is_ignored_until_the_next_ack(tmp_path, caplog):
    (tmp_path / TOKEN_FILE).write_bytes(b"\x00\x01\x02")
    tokens = LenderTokens(tmp_path / TOKEN_FILE)
    assert tokens.token is None and "not 12" in caplog.text
    assert tokens.offer(issue_token(KEY, DEVICE, T0), round_trip=0.2) and tokens.time == T0


def test_every_envelope_names_the_enrollment_the_gateway_is_bound_to(tmp_path):
    binding = bytes.fromhex("1f7b3085f8c585dc")
    agent = build_agent(tmp_path, binding=binding, recording=True)
    agent.recorder.record([reading()])
    agent.spool.close(), agent.state.close()  # a power cut: the restart signs a gap record, bound too
    agent = build_agent(tmp_path, binding=binding, recording=True)
    envelopes = signed_envelopes(agent)
    assert len(envelopes) == 2 and all(e.binding == binding for e in envelopes)
    (tmp_path / "unbound").mkdir()
    assert build_agent(tmp_path / "unbound", recording=True).recorder.record([]).binding is None
