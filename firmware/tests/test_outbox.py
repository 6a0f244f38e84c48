"""The outbox ring in flash: bounded, alarms kept, routine dropped oldest first, damage detected (tests only)."""

import outbox
from check import equal, fresh_dir, raises
from errors import StorageError


def _box(slots=4):
    return outbox.Outbox(fresh_dir("outbox") + "/outbox.bin", slots)


def test_envelopes_come_back_byte_for_byte_alarms_first_then_oldest_first():
    box = _box()
    for seq, alarm in ((1, False), (2, True), (3, False)):
        equal(box.append(seq, b"\xd2" + bytes([seq]) * 100, alarm), [])
    equal(box.seqs(), [2, 1, 3])
    equal(box.read(3), b"\xd2" + b"\x03" * 100)
    reopened = outbox.Outbox(box.path, 4)
    equal((reopened.seqs(), reopened.read(2)), ([2, 1, 3], b"\xd2" + b"\x02" * 100))


def test_the_file_never_grows_and_a_full_ring_drops_the_oldest_routine_envelope():
    import os

    box = _box(3)
    size = os.stat(box.path)[6]
    for seq in (1, 2, 3):
        box.append(seq, b"\xd2r", seq == 2)
    equal((box.append(4, b"\xd2new", False), box.alarms_dropped), ([1], 0))
    equal(box.seqs(), [2, 3, 4])
    equal(os.stat(box.path)[6], size)


def test_alarms_survive_a_full_ring_and_a_routine_newcomer_is_the_one_dropped():
    box = _box(2)
    box.append(1, b"\xd2alarm", True)
    box.append(2, b"\xd2alarm", True)
    equal((box.append(3, b"\xd2routine", False), box.alarms_dropped), ([3], 0))
    equal(box.seqs(), [1, 2])
    equal(box.append(4, b"\xd2alarm", True), [1], "only alarms left: the oldest alarm makes room")
    equal(box.alarms_dropped, 1, "and the overflow gap will say an alarm went")
    box.remove([2])
    equal((box.append(5, b"\xd2routine", False), box.alarms_dropped), ([], 0))


def test_acked_envelopes_free_their_slots():
    box = _box()
    box.append(1, b"\xd2a", False)
    box.append(2, b"\xd2b", False)
    equal(box.remove([1, 7]), 1)
    equal(outbox.Outbox(box.path, 4).seqs(), [2])


def test_a_damaged_slot_is_detected_and_never_sent():
    box = _box()
    box.append(5, b"\xd2" + b"x" * 50, False)
    with open(box.path, "r+b") as file:
        file.seek(30)
        file.write(b"\x00")
    reopened = outbox.Outbox(box.path, 4)
    equal((reopened.seqs(), reopened.damaged), ([], 1))
    box.append(6, b"\xd2y", False)
    with open(box.path, "r+b") as file:
        file.seek(outbox.SLOT + 17)  # the envelope's second byte
        file.write(b"z")
    raises(StorageError, box.read, 6)


def test_an_envelope_too_big_for_a_slot_or_a_reused_seq_is_refused():
    box = _box()
    raises(StorageError, box.append, 1, bytes(outbox.MAX_ENVELOPE + 1), False)
    box.append(1, b"\xd2", False)
    raises(StorageError, box.append, 1, b"\xd2", False)
