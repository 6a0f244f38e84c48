"""The lender's registry follows a device's key handover (issue 15): switched on a verified handover answering a
rotate-key command it issued, the old key kept for what it signed, refused above the handover; a broken,
unasked-for or expired handover refused; a race for one rotation flagged. Both store backends."""
import dataclasses

import pytest

from lender.evidence.commands import CommandDesk
from lender.evidence.ingest import Ingest
from lender.evidence.log import lender_identity
from lender.evidence.registry import Device
from telemetry import cbor
from telemetry.ack import Reason
from telemetry.command import Command, RotateKey
from telemetry.rotation import NEXT_PROOF, handover_records
from telemetry.senml import Record
from tests.telemetry.test_rotation import NEW, OLD, THIEF, T0, Chain

pytestmark = pytest.mark.backends


@pytest.fixture
def rotation(store, data_dir):
    """A registered gw-1 on OLD, a rotate-key command issued to it, the ingest, and the device's chain."""
    store.add_device(Device("gw-1", OLD.public_key, registered_at=T0))
    desk = CommandDesk(store, lender_identity(data_dir), clock=lambda: T0)
    issued = desk.rotate_key("gw-1", "staff")
    command = Command.verify(issued.raw, lender_identity(data_dir).public_key)
    return Ingest(store, clock=lambda: T0 + 100), command, Chain()


def deliver(ingest, *envelopes):
    return ingest.batch(cbor.encode([e.raw for e in envelopes]), peer="test")


def test_a_verified_handover_switches_the_key_and_what_the_old_key_signed_before_it_still_counts(rotation, store):
    ingest, command, chain = rotation
    first, late = chain.sign(OLD), chain.sign(OLD)
    handover = chain.sign(OLD, handover_records(command, OLD.kid, NEW, T0 + 10))
    after = [chain.sign(NEW), chain.sign(NEW)]
    assert deliver(ingest, first).stored == (1,)
    outcome = deliver(ingest, handover, *after)          # the handover and the new key's envelopes, in one batch
    assert outcome.stored == (3, 4, 5) and not outcome.refused, outcome.refused
    assert deliver(Ingest(store), late).stored == (2,)   # a late old-key envelope below the handover, a new ingest
    device = store.device("gw-1")
    assert (device.kid, device.key_since, device.enrolled_key, device.algorithm) == (NEW.kid, 3, OLD.public_key,
                                                                                      "EdDSA")
    shown = device.to_json()
    assert shown["public_key_hex"] == NEW.public_key.hex() and shown["enrolled_public_key_hex"] == OLD.public_key.hex()
    (retired,) = store.retired_keys("gw-1")
    assert (retired.kid, retired.through_seq, retired.command_digest) == (OLD.kid, 3, command.digest)
    stolen = deliver(Ingest(store), chain.sign(OLD))     # a copy of the old key, after the handover: refused
    assert [r.reason for r in stolen.refused] == [Reason.REVOKED] and "retired" in stolen.refused[0].text
    assert store.device("gw-1").key_race is None


def test_a_handover_with_a_broken_proof_or_answering_no_unexpired_command_it_issued_is_refused(rotation, store,
                                                                                               data_dir):
    ingest, command, _ = rotation
    unasked = Command("gw-1", 99, T0, T0 + 600, RotateKey(bytes(16))).sign(lender_identity(data_dir))
    broken = [r if r.name != NEXT_PROOF else dataclasses.replace(r, data=bytes(64))
              for r in handover_records(command, OLD.kid, NEW, T0 + 10)]
    late = Ingest(store, clock=lambda: command.expires + 100)   # received after expiry, never handed out, signed late
    for receiver, records, why in ((ingest, handover_records(unasked, OLD.kid, NEW, T0 + 10), "no rotate-key command"),
                                   (ingest, broken, "did not sign this handover"),
                                   (late, handover_records(command, OLD.kid, NEW, command.expires + 1), "expired")):
        outcome = deliver(receiver, Chain().sign(OLD, records))   # seq 1 each time: none is stored
        assert [r.reason for r in outcome.refused] == [Reason.MALFORMED] and why in outcome.refused[0].text, \
            outcome.refused
        assert store.device("gw-1").kid == OLD.kid and store.retired_keys() == []


def test_a_second_handover_for_the_rotation_is_refused_and_flags_the_old_key_in_two_hands(rotation, store):
    ingest, command, chain = rotation
    handover = chain.sign(OLD, handover_records(command, OLD.kid, NEW, T0 + 10))
    assert deliver(ingest, handover, chain.sign(NEW)).stored == (1, 2)
    thief = chain.sign(OLD, handover_records(command, OLD.kid, THIEF, T0 + 20))
    outcome = deliver(ingest, thief)
    assert [r.reason for r in outcome.refused] == [Reason.REVOKED] and "two hands" in outcome.refused[0].text
    device = store.device("gw-1")
    assert device.kid == NEW.kid and "two hands" in device.key_race and device.to_json()["key_race"]
    assert deliver(ingest, chain.sign(NEW, [Record("temp", value=1.0, unit="Cel", time=T0 + 30)], seq=4)).stored \
        == (4,)   # flagged, not decided by arrival: the device's evidence keeps coming in for staff to judge


def test_a_handover_arriving_after_expiry_counts_when_the_command_was_handed_out_in_time(rotation, store):
    _, command, chain = rotation
    store.mark_delivered("gw-1", command.seq, T0 + 5)   # over OSCORE, before it expired; the gateway then went offline
    late = Ingest(store, clock=lambda: command.expires + 86_400)
    outcome = deliver(late, chain.sign(OLD, handover_records(command, OLD.kid, NEW, command.expires + 3600)))
    assert outcome.stored == (1,) and store.device("gw-1").kid == NEW.kid, outcome.refused
