"""The key handover (telemetry.rotation): old key to new inside the chain, and a verifier following it offline."""
import pytest

from telemetry.chain import check_chain
from telemetry.command import Command, Inspect, RotateKey
from telemetry.envelope import GENESIS, Counters, digest, seal
from telemetry.identity import Identity, P256Identity
from telemetry.rotation import NEXT_KEY, NEXT_PROOF, RotationError, follow, handover_records, read_handover, statement
from telemetry.senml import Record

LENDER = Identity(bytes(range(32)))
OLD, NEW, THIEF = Identity(bytes(range(1, 33))), Identity(bytes(range(2, 34))), Identity(bytes(range(3, 35)))
T0 = 1_780_000_000


def rotate(seq=1, device="gw-1"):
    return Command(device, seq, T0, T0 + 600, RotateKey(bytes(range(16)))).sign(LENDER)


class Chain:
    """A device's chain as it signs it: seq, prev, counters."""

    def __init__(self, device="gw-1"):
        self.device, self.seq, self.prev, self.raws = device, 0, GENESIS, []

    def sign(self, key, records=None, *, seq=None, prev=None):
        seq = self.seq + 1 if seq is None else seq
        envelope = seal(key, device=self.device, boot=1, seq=seq, prev=self.prev if prev is None else prev,
                        records=records or [Record("temp", value=4.5 + seq, unit="Cel", time=T0 + seq)],
                        counters=Counters(0, 0))
        self.seq, self.prev = seq, digest(envelope.raw)
        self.raws.append(envelope.raw)
        return envelope


def test_a_chain_continues_across_a_handover_and_a_verifier_follows_it_from_the_enrolled_key_alone():
    chain = Chain()
    chain.sign(OLD)
    chain.sign(OLD)
    handover = chain.sign(OLD, handover_records(rotate(), OLD.kid, NEW, T0 + 3))
    chain.sign(NEW)
    chain.sign(NEW)
    found = read_handover(handover)
    assert (found.old_kid, found.new_key.public_key, found.command_digest) == (OLD.kid, NEW.public_key, rotate().digest)
    followed = follow(reversed(chain.raws), OLD.device_key("gw-1"))
    assert followed.ok, followed.problems
    assert [e.seq for e in followed.envelopes] == [1, 2, 3, 4, 5]
    assert [followed.key_at(s).kid for s in (1, 3, 4, 5)] == [OLD.kid, OLD.kid, NEW.kid, NEW.kid]
    assert check_chain(followed.envelopes).intact   # one chain: seq 4 links to the handover


def test_a_handover_to_a_p256_key_is_followed():
    tpm = P256Identity(bytes.fromhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"))
    chain = Chain()
    chain.sign(OLD, handover_records(rotate(), OLD.kid, tpm, T0))
    chain.sign(tpm)
    followed = follow(chain.raws, OLD.device_key("gw-1"))
    assert followed.ok and followed.key_at(2).public_key == tpm.public_key


def test_the_stolen_old_key_signs_nothing_after_the_rotation_not_even_a_handover_to_the_thief():
    chain = Chain()
    chain.sign(OLD, handover_records(rotate(), OLD.kid, NEW, T0))
    chain.sign(NEW)
    chain.sign(OLD)                                                     # the thief, after the rotation
    chain.sign(OLD, handover_records(rotate(2), OLD.kid, THIEF, T0))    # and its own handover, to its key
    chain.sign(THIEF)
    followed = follow(chain.raws, OLD.device_key("gw-1"))
    assert [e.seq for e in followed.envelopes] == [1, 2]
    assert len(followed.problems) == 3 and all("not the key in force" in p for p in followed.problems)
    assert "a retired key" in followed.problems[0]
    assert followed.key_at(5).kid == NEW.kid


def test_a_race_for_one_rotation_is_reported_not_decided():
    chain, command = Chain(), rotate()
    device = chain.sign(OLD, handover_records(command, OLD.kid, NEW, T0))
    thief = seal(OLD, device="gw-1", boot=1, seq=1, prev=GENESIS, records=handover_records(command, OLD.kid, THIEF, T0),
                 counters=Counters(0, 0))   # a clone of the old key answers the same command first
    for order in ([device.raw, thief.raw], [thief.raw, device.raw]):
        followed = follow(order, OLD.device_key("gw-1"))
        assert not followed.ok and "retired key" in followed.problems[0]


def test_a_handover_that_is_not_whole_is_refused():
    def refused(records, match):
        with pytest.raises(RotationError, match=match):
            read_handover(Chain().sign(OLD, records))

    good = handover_records(rotate(), OLD.kid, NEW, T0)
    proof_by_thief = THIEF.sign(statement("gw-1", OLD.kid, NEW.public_key, rotate().digest))
    refused([r if r.name != NEXT_PROOF else Record(NEXT_PROOF, data=proof_by_thief, time=T0) for r in good],
            "did not sign")   # naming a key whose holder did not sign this handover
    other = THIEF.sign(statement("gw-1", OLD.kid, NEW.public_key, rotate(2).digest))
    refused([r if r.name != NEXT_PROOF else Record(NEXT_PROOF, data=other, time=T0) for r in good], "did not sign")
    refused([r for r in good if r.name != NEXT_PROOF], "proof")
    refused([r for r in good if r.name != "command.digest"], "digest")
    refused([r if r.name != NEXT_KEY else Record(NEXT_KEY, data=b"\x01" * 7, time=T0) for r in good], "no key")
    refused(handover_records(rotate(), OLD.kid, OLD, T0), "did not sign|same key")
    inspect = Command("gw-1", 1, T0, T0 + 600, Inspect(bytes(8))).sign(LENDER)
    with pytest.raises(RotationError, match="rotate-key"):
        handover_records(inspect, OLD.kid, NEW, T0)
    assert read_handover(Chain().sign(OLD)) is None


def test_a_handover_for_another_device_does_not_verify_as_this_ones():
    records = handover_records(rotate(device="gw-2"), OLD.kid, NEW, T0)   # the proof names gw-2
    with pytest.raises(RotationError, match="did not sign"):
        read_handover(Chain("gw-1").sign(OLD, records))


def test_the_handover_vector_is_followed_from_the_old_key_and_answers_the_lenders_command():
    import json
    from pathlib import Path

    from telemetry.identity import DeviceKey

    vectors = Path(__file__).parent.parent / "vectors"
    description = json.loads((vectors / "handover-v1.json").read_text())
    raws = [(vectors / f"{name}.cbor").read_bytes() for name in ("handover-v1", "handover-v1-next")]
    command = Command.verify(bytes.fromhex(description["command_hex"]), bytes.fromhex(description["lender_public_key_hex"]))
    followed = follow(raws, DeviceKey("gw-test-1", bytes.fromhex(description["public_key_hex"])))
    assert followed.ok, followed.problems
    handover = read_handover(followed.envelopes[0])
    assert handover.command_digest == command.digest and handover.command_seq == command.seq == 4
    assert followed.key_at(11).public_key.hex() == description["new_public_key_hex"]
