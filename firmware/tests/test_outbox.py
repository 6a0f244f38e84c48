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


def _legacy_outbox(path, slots):
    """An outbox file of the firmware before version 2: 320-byte slots; slots is [(seq, alarm, body) or None]."""
    import struct

    with open(path, "wb") as file:
        for slot in slots:
            record = b""
            if slot is not None:
                seq, alarm, body = slot
                header = struct.pack(">BBQH", 0xA5, 1 if alarm else 0, seq, len(body))
                record = header + outbox._check(header, body) + body
            file.write(record + bytes(outbox.LEGACY_SLOT - len(record)))


def test_an_outbox_of_the_firmware_before_version_2_is_moved_over_whole_and_deleted():
    import os

    root = fresh_dir("outbox-legacy")
    legacy = root + "/outbox.bin"
    _legacy_outbox(legacy, [(7, True, b"\xd2" + bytes([7]) * 200), None, (9, False, b"\xd2" + bytes([9]) * 200)])
    box = outbox.Outbox(root + "/outbox2.bin", 2, legacy=legacy)
    equal((box.seqs(), box.is_alarm(7), box.read(9)), ([7, 9], True, b"\xd2" + bytes([9]) * 200))
    equal(box.slots, 3, "never fewer slots than the old outbox had")
    raises(OSError, os.stat, legacy)
    again = outbox.Outbox(root + "/outbox2.bin", 2, legacy=legacy)
    equal((again.seqs(), again.read(7)), ([7, 9], b"\xd2" + bytes([7]) * 200))


def test_a_move_cut_short_by_a_power_cut_is_finished_without_storing_a_seq_twice():
    root = fresh_dir("outbox-legacy-cut")
    legacy = root + "/outbox.bin"
    _legacy_outbox(legacy, [(3, False, b"\xd2" + bytes([3]) * 10), (4, False, b"\xd2" + bytes([4]) * 10)])
    partial = outbox.Outbox(root + "/outbox2.bin", 4)
    partial.append(3, b"\xd2" + bytes([3]) * 10, False)  # the cut came after seq 3 was moved
    box = outbox.Outbox(root + "/outbox2.bin", 4, legacy=legacy)
    equal(box.seqs(), [3, 4])


def test_the_largest_envelope_a_node_can_sign_fits_a_slot():
    import ed25519
    import envelope

    key = ed25519.SigningKey(bytes(range(32)))
    t = 0xFFFFFFFF
    records = [{"name": "temp", "value": -55.0625, "unit": "Cel", "time": t},
               {"name": "alarm.tamper", "boolean": True, "time": t},
               {"name": "batt", "value": 3.6015625, "unit": "V", "time": t},
               {"name": "alarm.motion", "boolean": True, "time": t},
               {"name": "alarm.tilt", "value": 179.875, "unit": "deg", "time": t},
               {"name": "device.heartbeat_s", "value": 7 * 86400, "unit": "s", "time": t}]
    big = 0xFFFFFFFFFFFFFFFF
    gap = {"reason": "storage-failure", "first": big - 9, "last": big, "count": 0xFFFFFFFF, "queued": 0xFFFFFFFF,
           "alarms_dropped": 0xFFFFFFFF}  # more than any one gap carries (queued and dropped: overflows only)
    raw = envelope.seal(key, "x" * 64, 0xFFFFFFFF, big, bytes(16), records, gap,
                        counters={"alarms": 0xFFFFFFFF, "gaps": 0xFFFFFFFF}, token=bytes(12), binding=bytes(8))
    assert len(raw) <= outbox.MAX_ENVELOPE, (len(raw), outbox.MAX_ENVELOPE)
    box = _box(2)
    box.append(1, raw, True)
    equal(box.read(1), raw)
