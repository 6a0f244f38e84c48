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
    equal(after.gap_dict(), {"reason": "power-loss", "first": 2, "last": 2, "count": 1})
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


def test_a_first_save_cut_short_leaves_a_fresh_node_not_a_refusal_to_sign():
    # Found by the power-cut test (tests/firmware/test_node_oscore.py): the first save of a new node torn.
    root, state, _ = _state_and_box()
    with open(root + "/chain.bin", "wb") as file:
        file.write(bytes(chainstate.SLOT) + b"PWC2\x00\x00\x00\x01\x00\x00")
    again = chainstate.ChainState(root + "/chain.bin")
    assert again.fresh
    equal(again.reserve(), 1)


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
    state.commit(1, b"B" * 16, True, [("overflow", 9, 9, 1, 4, 0)])
    equal(state.gap_dict(), {"reason": "overflow", "first": 9, "last": 9, "count": 1, "queued": 4, "alarms_dropped": 0},
          "losses of this very append wait for the next envelope")


def test_an_overflow_says_how_full_the_outbox_was_and_how_many_alarms_it_dropped_and_survives_a_restart():
    root, state, _ = _state_and_box()
    state.note_gap("overflow", 3, 3, 1, 4, 0)
    state.note_gap("overflow", 5, 5, 1, 4, 1)
    state.save()
    equal(chainstate.ChainState(root + "/chain.bin").gap_dict(),
          {"reason": "overflow", "first": 3, "last": 5, "count": 2, "queued": 4, "alarms_dropped": 1})


def _counters(state):
    return (state.alarms, state.gaps)


def test_the_counters_are_saved_with_the_reservation_and_never_go_down_after_a_power_cut():
    root, state, box = _state_and_box()
    equal(state.counters(), {"alarms": 0, "gaps": 0})
    state.reserve(alarm=True)
    box.append(1, b"\xd2alarm", True)
    state.commit(1, chainstate.digest(b"\xd2alarm"), False)
    state.reserve(alarm=True, gap=True)  # seq 2: an alarm and a gap record, signed; the power fails before storing
    after = chainstate.ChainState(root + "/chain.bin")
    equal(_counters(after), (2, 1), "the lost envelope stays counted: the lender sees it signed and never received")
    equal(after.recover(outbox.Outbox(root + "/outbox.bin", 4)), "lost")
    after.reserve(gap=True)  # seq 3 reports the power-loss gap
    equal((after.counters(), _counters(chainstate.ChainState(root + "/chain.bin"))), ({"alarms": 2, "gaps": 2}, (2, 2)))


def test_a_torn_reservation_leaves_the_counters_of_the_record_before_it_never_less():
    root, state, _ = _state_and_box()
    state.reserve(alarm=True)
    state.commit(1, b"A" * 16, False)  # generation 2: seq 1 signed, alarms 1
    state.reserve(alarm=True)  # generation 3: torn below
    with open(root + "/chain.bin", "r+b") as file:
        file.seek((state.generation % 2) * chainstate.SLOT + 30)
        file.write(b"\xff\xfe")
    after = chainstate.ChainState(root + "/chain.bin")
    # The save that failed reserved seq 2 and counted it; nothing was signed with it. The older record
    # counts what was signed: seq 1, one alarm, and seq 2 is free again.
    equal((after.generation, after.next_seq, _counters(after)), (2, 2, (1, 0)))


def test_only_a_newer_lender_token_is_kept_and_it_survives_in_flash():
    root, state, _ = _state_and_box()
    older = b"\x69\x55\xb9\x64" + bytes(8)
    newer = b"\x69\x55\xb9\xc8" + b"\x01" * 8
    equal(state.token, None)
    assert state.take_token(older)
    assert state.take_token(newer)
    assert not state.take_token(older), "a token with an older lender time is ignored"
    assert not state.take_token(newer[:4] + b"\x02" * 8), "the same lender time is not newer"
    assert not state.take_token(b"\xff" * 11), "a token is 12 bytes"
    state.save()
    equal(chainstate.ChainState(root + "/chain.bin").token, newer)


def test_a_record_written_before_envelope_version_2_is_read_and_carries_on_from_it():
    import hashlib
    import struct

    root = fresh_dir("chain-v1")
    # A PWC1 slot (the layout before counters and tokens): generation 7, boot 3, next seq 12, head 11,
    # a pending overflow gap of seqs 4..5.
    body = struct.pack(">4sIIQQ16sQBQQI", b"PWC1", 7, 3, 12, 11, b"P" * 16, 0, 1, 4, 5, 2)
    with open(root + "/chain.bin", "wb") as file:
        file.write(bytes(chainstate.SLOT) + body + hashlib.sha256(body).digest()[:4] + bytes(chainstate.SLOT - len(body) - 4))
    state = chainstate.ChainState(root + "/chain.bin")
    equal((state.generation, state.boot, state.next_seq, state.prev, state.counters(), state.token),
          (7, 3, 12, b"P" * 16, {"alarms": 0, "gaps": 0}, None))
    equal(state.gap_dict(), {"reason": "overflow", "first": 4, "last": 5, "count": 2}, "an old overflow has no account")
    equal(state.reserve(gap=True), 12)
    again = chainstate.ChainState(root + "/chain.bin")
    equal((again.generation, again.next_seq, again.counters()), (8, 13, {"alarms": 0, "gaps": 1}))


def test_a_record_written_before_oscore_is_read_with_no_outbox_victim():
    import hashlib
    import struct

    root = fresh_dir("chain-v2")
    body = struct.pack(">4sIIQQ16sQBQQIIIII12s", b"PWC2", 4, 2, 9, 8, b"Q" * 16, 0, 0, 0, 0, 0, 0, 0, 1, 0, b"T" * 12)
    with open(root + "/chain.bin", "wb") as file:
        file.write(body + hashlib.sha256(body).digest()[:4] + bytes(2 * chainstate.SLOT - len(body) - 4))
    state = chainstate.ChainState(root + "/chain.bin")
    equal((state.generation, state.next_seq, state.token, state.victim), (4, 9, b"T" * 12, None))
    equal(state.reserve(), 9)
    equal(chainstate.ChainState(root + "/chain.bin").next_seq, 10)


def _full_box(root):
    box = outbox.Outbox(root + "/outbox.bin", 2)
    box.append(1, b"\xd2one", False)
    box.append(2, b"\xd2two", False)
    return box


def test_an_append_that_overwrote_the_oldest_envelope_before_the_power_failed_is_reported_as_an_overflow():
    # Found by the power-cut test (tests/firmware/test_node_oscore.py): the drop was only in memory until the commit.
    root = fresh_dir("victim")
    state, box = chainstate.ChainState(root + "/chain.bin"), _full_box(root)
    state.next_seq = 3
    seq = state.reserve(victim=box.victim(False))
    equal(state.victim, (1, 0, 2))
    equal(box.append(seq, b"\xd2three", False), [1])  # seq 1 overwritten; the power fails before commit()
    after = chainstate.ChainState(root + "/chain.bin")
    equal(after.recover(outbox.Outbox(root + "/outbox.bin", 2)), "recovered")
    equal(after.gap_dict(), {"reason": "overflow", "first": 1, "last": 1, "count": 1, "queued": 2,
                             "alarms_dropped": 0})


def test_a_full_outbox_whose_append_never_happened_reports_no_overflow():
    root = fresh_dir("victim-kept")
    state, box = chainstate.ChainState(root + "/chain.bin"), _full_box(root)
    state.next_seq = 3
    state.reserve(victim=box.victim(False))  # the power fails before the append: seq 1 is still there
    after = chainstate.ChainState(root + "/chain.bin")
    equal(after.recover(outbox.Outbox(root + "/outbox.bin", 2)), "lost")
    equal(after.gap_dict(), {"reason": "power-loss", "first": 3, "last": 3, "count": 1})
