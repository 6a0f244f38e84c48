"""The agent's state documents: counters that never go backwards, power-cut detection, safe writes, damage.

Real files in a temp dir; hypothesis damages a real state file hundreds of ways.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import agent.state
from agent.exc import AgentError, StateCorruptError, StateUnavailableError, StateValueError
from agent.state import AgentState, AtomicJSONStorage


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state.json"


def test_boot_counter_counts_every_start_across_restarts(state_path):
    for expected in (1, 2, 3):
        with AgentState.open(state_path) as state:
            assert state.begin_run().boot == expected
    with AgentState.open(state_path) as state:
        assert state.boot == 3
        assert state.next_boot() == 4
    with AgentState.open(state_path) as state:
        assert state.boot == 4


def test_seqs_are_never_reused_after_a_restart(state_path):
    with AgentState.open(state_path) as state:
        assert state.seq_ceiling == -1  # nothing reserved: the first seq is 0
        state.reserve_seqs(999)
    with AgentState.open(state_path) as state:
        assert state.seq_ceiling == 999  # the next run starts at 1000, whatever the spool says
        state.reserve_seqs(999)  # reserving the same ceiling again is harmless
        state.reserve_seqs(1999)
    with AgentState.open(state_path) as state:
        assert state.seq_ceiling == 1999


@pytest.mark.parametrize("call, message", [
    (lambda s: s.reserve_seqs(10), "seq_ceiling never goes backwards: 10 is below 999"),
    (lambda s: s.reserve_seqs(-5), "seq_ceiling must be a non-negative integer, got -5"),
    (lambda s: s.reserve_seqs(2000.0), "seq_ceiling must be a non-negative integer, got 2000.0"),
    (lambda s: s.record_chain_head(3, bytes(16)), "chain head seq 3 is below the recorded 7"),
    (lambda s: s.record_acked(-1), "acked seq must be a non-negative integer"),
    (lambda s: s.save_config_snapshot({"when": object()}), "config snapshot must be JSON-serialisable"),
])
def test_state_refuses_to_go_backwards_or_store_nonsense(state_path, call, message):
    with AgentState.open(state_path) as state:
        state.reserve_seqs(999)
        state.record_chain_head(7, b"\x07" * 16)
        before = state_path.read_bytes()
        with pytest.raises(StateValueError, match=re.escape(message)):
            call(state)
        assert state_path.read_bytes() == before
        assert state.seq_ceiling == 999 and state.chain_head == (7, b"\x07" * 16)
    assert issubclass(StateValueError, ValueError) and issubclass(StateValueError, AgentError)


def test_acked_watermark_only_rises(state_path):
    with AgentState.open(state_path) as state:
        state.record_acked(40)
        state.record_acked(12)  # a late ack for an older batch
        assert state.acked_watermark == 40
    with AgentState.open(state_path) as state:
        assert state.acked_watermark == 40


def test_a_power_cut_is_noticed_at_the_next_start(state_path):
    with AgentState.open(state_path) as state:
        assert state.begin_run().previous_run_clean  # a first start is not a power cut
        state.mark_clean_shutdown()
    with AgentState.open(state_path) as state:
        assert state.begin_run().previous_run_clean
        # ...and power fails: no mark_clean_shutdown
    with AgentState.open(state_path) as state:
        run = state.begin_run()
        assert run.previous_run_clean is False and run.boot == 3


def test_chain_head_and_config_snapshot_survive_a_restart(state_path):
    snapshot = {"device": "gw-0042", "uplink": {"uri": "coap://lender.example/ingest", "batch": 64},
                "sensors": [{"kind": "temperature", "interval_s": 60.0}]}
    with AgentState.open(state_path) as state:
        assert state.chain_head is None and state.config_snapshot is None
        state.record_chain_head(41, bytes(range(16)))
        state.save_config_snapshot(snapshot)
        state.save_config_snapshot(snapshot | {"device": "gw-0043"})  # replaced whole, not merged
    with AgentState.open(state_path) as state:
        assert state.chain_head == (41, bytes(range(16)))
        assert state.config_snapshot == snapshot | {"device": "gw-0043"}


def test_state_is_replaced_whole_never_rewritten_in_place(state_path, monkeypatch):
    with AgentState.open(state_path) as state:
        state.reserve_seqs(999)
        inode = state_path.stat().st_ino
        state.reserve_seqs(1999)
        assert state_path.stat().st_ino != inode  # a new file renamed over the old one
        assert oct(state_path.stat().st_mode & 0o777) == oct(0o600)
        before = state_path.read_bytes()

        def power_fails_before_the_rename(source, target):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(agent.state.os, "replace", power_fails_before_the_rename)
        with pytest.raises(StateUnavailableError, match="cannot write"):
            state.reserve_seqs(2999)
        monkeypatch.undo()
        assert state_path.read_bytes() == before  # the old version, whole
        assert state.seq_ceiling == 1999  # memory agrees with the disk
    assert (state_path.parent / "state.json.tmp").exists()
    with AgentState.open(state_path) as state:
        assert state.seq_ceiling == 1999
    assert not (state_path.parent / "state.json.tmp").exists()  # the orphan temp file is cleaned up


def test_state_says_clearly_when_its_directory_does_not_exist(tmp_path):
    with pytest.raises(StateUnavailableError, match="does not exist"):
        AgentState.open(tmp_path / "missing" / "state.json")


def test_storage_rejects_a_file_whose_content_does_not_match_its_checksum(state_path):
    with AgentState.open(state_path) as state:
        state.reserve_seqs(1999)
    text = state_path.read_text().replace('"seq_ceiling": 1999', '"seq_ceiling": 1000')
    state_path.write_text(text)
    with pytest.raises(StateCorruptError, match="checksum does not match"):
        AtomicJSONStorage(state_path).read()


# --- damage: hypothesis picks where ------------------------------------------------

def _reference_file() -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.json"
        with AgentState.open(path) as state:
            state.begin_run()
            state.reserve_seqs(4999)
            state.record_acked(4321)
            state.record_chain_head(4400, bytes(range(16)))
            state.save_config_snapshot({"device": "gw-0042", "batch": 64})
        return path.read_bytes()


REFERENCE = _reference_file()

damages = st.one_of(
    st.tuples(st.just("overwrite"), st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("digit"), st.floats(0, 1, exclude_max=True), st.sampled_from(b"0123456789")),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(b"")),
    st.tuples(st.just("replace"), st.just(0.0), st.binary(max_size=600)),
    st.tuples(st.just("json"), st.just(0.0), st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12).map(lambda v: json.dumps(v).encode())),
)


def _damage(kind: str, where: float, data) -> bytes:
    position = int(where * len(REFERENCE))
    if kind == "overwrite":
        return REFERENCE[:position] + data + REFERENCE[position + len(data):]
    if kind == "digit":  # the nastiest flip: still valid JSON, just a different number
        digits = [i for i, b in enumerate(REFERENCE) if chr(b).isdigit()]
        at = digits[int(where * len(digits))]
        return REFERENCE[:at] + bytes([data]) + REFERENCE[at + 1:]
    if kind == "truncate":
        return REFERENCE[:position]
    return data


@settings(max_examples=250, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(damage=damages)
def test_damaged_state_file_is_moved_aside_and_never_crashes_the_agent(caplog, damage):
    damaged = _damage(*damage)
    caplog.clear()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.json"
        path.write_bytes(damaged)
        with caplog.at_level(logging.ERROR, logger="agent.state"):
            state = AgentState.open(path)
        with state:
            if damaged == REFERENCE or state.recovered_from is None:
                event(f"{damage[0]}: unchanged meaning")
                # Only changes that do not alter the content pass (whitespace, say): same values.
                assert (state.boot, state.seq_ceiling, state.acked_watermark) == (1, 4999, 4321)
                assert state.chain_head == (4400, bytes(range(16)))
                assert state.config_snapshot == {"device": "gw-0042", "batch": 64}
            else:
                event(f"{damage[0]}: moved aside")
                assert state.recovered_from.read_bytes() == damaged
                assert re.fullmatch(r"state\.json\.corrupt-\d{8}T\d{6}Z(\.\d+)?", state.recovered_from.name)
                errors = [r for r in caplog.records if r.name == "agent.state" and r.levelno == logging.ERROR]
                assert len(errors) == 1 and str(state.recovered_from) in errors[0].getMessage()
                assert (state.boot, state.seq_ceiling) == (0, -1)
                assert state.begin_run().previous_run_clean is False  # lost state: assume the worst
            state.reserve_seqs(state.seq_ceiling + 1000)  # and the agent carries on
        with AgentState.open(path) as again:
            assert again.recovered_from is None  # no loop: the next start is clean
