"""The lender's signed commands: a device applies only a genuine, new, unexpired command meant for it."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import cbor, cose
from telemetry.command import (
    COMMAND_AAD,
    Command,
    Configure,
    Inspect,
    Kind,
    Outcome,
    Permit,
    RotateKey,
    accept,
    config_digest,
    inspection_nonce,
    outcome_records,
)
from telemetry.exc import CommandError, CommandRefused, WireFormatError
from telemetry.identity import Identity

LENDER = Identity(bytes(range(32)))
BORROWER = Identity(bytes(range(1, 33)))
T0 = 1767225600


def inspect(seq: int, device: str = "gw-1", expires: int = T0 + 300) -> bytes:
    return Command(device, seq, T0, expires, Inspect(bytes(16))).sign(LENDER).raw


def test_a_command_round_trips_for_every_kind():
    bodies = [Inspect(b"n" * 8, ("stock",)), Permit("stock", T0, T0 + 60, "release of goods, contract C", ("door",)),
              Configure(1, b"[rules]\n"), RotateKey(b"r" * 16)]
    for seq, body in enumerate(bodies, 1):
        signed = Command("gw-1", seq, T0, T0 + 60, body).sign(LENDER)
        assert Command.verify(signed.raw, LENDER.public_key) == signed
        assert signed.kind == list(Kind)[seq - 1]


def test_a_command_signed_by_anyone_but_the_lender_is_refused():
    forged = Command("gw-1", 1, T0, T0 + 60, Inspect(bytes(8))).sign(BORROWER).raw
    with pytest.raises(CommandError, match="not a command signed by the lender"):
        accept(forged, LENDER.public_key, "gw-1", 0, T0)


def test_a_command_signed_for_another_purpose_is_refused():
    payload = Command("gw-1", 1, T0, T0 + 60, Inspect(bytes(8))).payload()
    other_aad = cose.sign1(LENDER, payload, b"pledgewatch-site/1")
    with pytest.raises(CommandError):
        accept(other_aad, LENDER.public_key, "gw-1", 0, T0)
    assert accept(cose.sign1(LENDER, payload, COMMAND_AAD), LENDER.public_key, "gw-1", 0, T0).seq == 1


def test_another_devices_an_old_and_an_expired_command_are_refused():
    with pytest.raises(CommandRefused, match="for device 'gw-2'"):
        accept(inspect(1, device="gw-2"), LENDER.public_key, "gw-1", 0, T0)
    with pytest.raises(CommandRefused, match="replayed or old"):
        accept(inspect(3), LENDER.public_key, "gw-1", 3, T0)
    with pytest.raises(CommandRefused, match="expired"):
        accept(inspect(4, expires=T0 + 10), LENDER.public_key, "gw-1", 3, T0 + 10)


def test_a_malformed_command_is_a_wire_format_error():
    bad = cose.sign1(LENDER, cbor.encode({1: "gw-1", 2: 1, 3: "self-destruct", 4: T0, 5: T0 + 1, 6: {}}), COMMAND_AAD)
    with pytest.raises(WireFormatError, match="unknown command kind"):
        Command.verify(bad, LENDER.public_key)
    with pytest.raises(CommandError, match="must end after it starts"):
        Permit("stock", T0, T0, "x")


def test_the_device_signs_which_command_it_acted_on():
    command = Command("gw-1", 7, T0, T0 + 60, Inspect(b"\x01" * 16)).sign(LENDER)
    records = outcome_records(command, Outcome.APPLIED, T0 + 1)
    assert inspection_nonce(records) == b"\x01" * 16
    assert {r.name: r.data or r.string or r.value for r in records}["command.digest"] == command.digest
    configured = Command("gw-1", 8, T0, T0 + 60, Configure(3, b"[rules]\n")).sign(LENDER)
    records = outcome_records(configured, Outcome.APPLIED, T0 + 2, config=config_digest(b"[rules]\n"))
    assert [r.data for r in records if r.name == "command.config"] == [configured.body.digest]


def test_a_permit_covers_its_asset_inputs_and_window_only():
    permit = Permit("stock", T0, T0 + 60, "release", ("door",))
    assert permit.covers("stock", T0, "door") and permit.covers("stock", T0 + 59, "door")
    assert not permit.covers("stock", T0 + 60, "door") and not permit.covers("yard", T0, "door")
    assert not permit.covers("stock", T0, "tamper")


@st.composite
def deliveries(draw):
    """Commands as the network might deliver them: issued in order, then replayed, reordered, expired, forged, misaddressed."""
    issued = draw(st.integers(1, 12))
    events = []
    for _ in range(draw(st.integers(1, 40))):
        seq = draw(st.integers(1, issued))
        how = draw(st.sampled_from(["valid", "valid", "expired", "forged", "other-device", "restart"]))
        events.append((seq, how))
    return events


@settings(max_examples=150, deadline=None)
@given(deliveries())
def test_random_command_deliveries_never_apply_a_command_twice_out_of_order_or_unverified(events):
    last, applied, now = 0, [], T0 + 100
    for seq, how in events:
        if how == "restart":
            continue  # the device keeps `last` durably: a restart changes nothing
        signer = BORROWER if how == "forged" else LENDER
        device = "gw-2" if how == "other-device" else "gw-1"
        expires = T0 + 50 if how == "expired" else T0 + 10_000
        raw = Command(device, seq, T0, expires, Inspect(bytes(8))).sign(signer).raw
        try:
            command = accept(raw, LENDER.public_key, "gw-1", last, now)
        except CommandError:
            continue
        assert how == "valid"
        applied.append(command.seq)
        last = command.seq
    assert applied == sorted(set(applied))
