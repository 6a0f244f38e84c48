"""The chain state in flash: a seq is never signed twice, whatever a power cut interrupts (tests only)."""

import chainstate
import outbox
from check import equal, fresh_dir, raises
from errors import StorageError


def _state_and_box():
    root = fresh_dir("chain")
    return root, chainstate.ChainState(root + "/chain.bin"), outbox.Outbox(root + "/outbox.bin", 4)


def test_a_fresh_node_starts_at_seq_1_from_genesis():
    _, state, _ = _state_and_box()
    assert state.fresh
    equal((state.next_seq, state.head_seq, state.prev, state.pending), (1, 0, bytes(16), 0))


def test_a_reserved_seq_is_in_flash_before_anything_is_signed_with_it():
    root, state, _ = _state_and_box()
    seq = state.reserve()
    again = chainstate.ChainState(root + "/chain.bin")  # the power fails right here
    equal((seq, again.next_seq, again.pending), (1, 2, 1))


def test_a_power_cut_after_signing_loses_the_seq_for_good_and_reports_it_as_a_gap():
    root, state, box = _state_and_box()
    state.reserve()
    box.append(1, b"\xd2envelope one", False)
    state.commit(1, chainstate.digest(b"\xd2envelope one"), False)
    state.reserve()  # seq 2 reserved and signed, then the power fails before the outbox write
    after = chainstate.ChainState(root + "/chain.bin")
    equal(after.recover(outbox.Outbox(root + "/outbox.bin", 4)), "lost")
    equal(after.gap, ["power-loss", 2, 2, 1])
    equal(after.prev, chainstate.digest(b"\xd2envelope one"), "the next envelope links to the last one that exists")
    equal(after.reserve(), 3)


def test_a_power_cut_after_storing_moves_the_head_to_the_stored_envelope():
    root, state, box = _state_and_box()
    state.reserve()
    box.append(1, b"\xd2stored, not committed", True)  # the cut comes before commit()
    after = chainstate.ChainState(root + "/chain.bin")
    equal(after.recover(outbox.Outbox(root + "/outbox.bin", 4)), "recovered")
    equal((after.head_seq, after.prev, after.gap), (1, chainstate.digest(b"\xd2stored, not committed"), None))
    equal(after.reserve(), 2)


def test_a_torn_write_costs_one_slot_and_the_older_record_still_holds():
    root, state, _ = _state_and_box()
    state.reserve()
    state.commit(1, b"A" * 16, False)
    state.reserve()  # generation 3 goes to slot 1
    with open(root + "/chain.bin", "r+b") as file:
        file.seek((state.generation % 2) * chainstate.SLOT + 20)
        file.write(b"\x00\x01\x02")  # the power fails mid-write
    after = chainstate.ChainState(root + "/chain.bin")
    equal((after.generation, after.head_seq, after.next_seq, after.pending), (2, 1, 2, 0))


def test_both_slots_damaged_is_an_error_not_a_silent_restart_from_seq_1():
    root, state, _ = _state_and_box()
    state.reserve()
    state.reserve()
    with open(root + "/chain.bin", "r+b") as file:
        file.write(b"\xff" * (2 * chainstate.SLOT))
    raises(StorageError, chainstate.ChainState, root + "/chain.bin")


def test_gaps_of_one_reason_merge_and_a_reported_gap_is_cleared_with_the_commit():
    _, state, _ = _state_and_box()
    state.note_gap("overflow", 4, 4, 1)
    state.note_gap("overflow", 2, 3, 2)
    equal(state.gap_dict(), {"reason": "overflow", "first": 2, "last": 4, "count": 3})
    state.reserve()
    state.commit(1, b"B" * 16, True, [("overflow", 9, 9, 1)])
    equal(state.gap, ["overflow", 9, 9, 1], "losses of this very append wait for the next envelope")
