"""The node's OSCORE sender sequence number in flash: no power cut, torn write or reload ever hands one out twice
(RFC 8613 Appendix B.1.1), and a damaged or foreign context is refused (tests only)."""

import os

import cbor
import oscore
import oscorekeys
from check import equal, fresh_dir, raises
from errors import StorageError
from oscore_files import SALT, SECRET, context_file, encode_header, load


def test_a_sequence_number_is_saved_as_used_before_it_is_handed_out():
    path = context_file(b"\x01", b"")
    context = load(path)
    assert context.fresh
    equal(context.next_sequence(), 0)
    equal(load(path).ceiling, oscore.RESERVE, "the power fails right after the first request")
    for expected in range(1, oscore.RESERVE):
        equal(context.next_sequence(), expected)
    equal(context.saves, 2, "a new record fills both slots, then one flash write per RESERVE numbers")
    equal(context.next_sequence(), oscore.RESERVE)
    equal(context.saves, 3)
    again = load(path)  # a new cycle (deep sleep is a reboot)
    equal(again.next_sequence(), 2 * oscore.RESERVE, "what the last cycle reserved and left unused is skipped")


def test_a_torn_save_keeps_the_older_slot_whose_ceiling_covers_every_number_handed_out():
    path = context_file(b"\x01", b"")
    context = load(path)
    used = [context.next_sequence() for _ in range(oscore.RESERVE)]
    with open(path, "r+b") as file:  # the next save (slot 0) is torn after 9 bytes
        file.seek(oscore.SLOT_OFFSETS[0])
        file.write(b"PWS1\x00\x00\x00\x02\xff")
    after = load(path)
    equal(after.ceiling, oscore.RESERVE)
    assert after.next_sequence() not in used


def test_random_power_cuts_never_bring_a_sequence_number_back():
    # 200 cut points: each run hands out some numbers, and the power fails at a random byte of a random save.
    # Numbers only ever go up (a stronger check than "never twice", and no set of them to grow on a 128 KB heap).
    path = context_file(b"\x01", b"")
    highest, used = -1, 0
    for _ in range(200):
        context = load(path)
        context.reserve_count = 1 + os.urandom(1)[0] % 5
        for _ in range(os.urandom(1)[0] % 8):
            seq = context.next_sequence()
            assert seq > highest, "sequence number %d after %d: a number came back" % (seq, highest)
            highest, used = seq, used + 1
        # the cut: a torn write of the slot the next save would take
        with open(path, "r+b") as file:
            file.seek(oscore.SLOT_OFFSETS[(context.generation + 1) % 2])
            file.write(os.urandom(1 + os.urandom(1)[0] % 32))
    assert used > 100


def test_a_first_save_cut_short_starts_the_record_again_from_zero():
    path = context_file(b"\x01", b"")
    with open(path, "r+b") as file:  # the power failed in the first write of a new record: nothing was used
        file.seek(oscore.SLOT_OFFSETS[1])
        file.write(b"PWS1\x00\x00")
    equal(load(path).next_sequence(), 0)


def test_both_slots_damaged_refuse_to_send_and_a_damaged_header_is_refused():
    path = context_file(b"\x01", b"")
    context = load(path)
    context.next_sequence()
    context.save()
    with open(path, "r+b") as file:
        for offset in oscore.SLOT_OFFSETS:
            file.seek(offset)
            file.write(b"\xff" * 32)
    raises(StorageError, load, path)
    with open(path, "r+b") as file:
        file.seek(20)
        file.write(b"\x00")
    raises(StorageError, load, path)


def test_a_context_of_another_suite_or_with_equal_ids_is_refused():
    path = fresh_dir("suite") + "/node.oscore"
    for keys in ({1: b"\x01", 2: b"", 3: SECRET, 4: SALT, 5: "AES-CCM-16-128-128", 6: "sha256"},
                 {1: b"\x01", 2: b"\x01", 3: SECRET, 4: SALT, 5: oscorekeys.ALGORITHM, 6: oscorekeys.KDF}):
        with open(path, "wb") as file:
            file.write(encode_header(cbor.encode(keys)))
        raises(StorageError, load, path)
