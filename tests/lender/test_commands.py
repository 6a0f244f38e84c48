"""The lender's commands: issued under per-device seqs, kept with who issued them, audited from what devices signed."""
import json

import pytest

from lender.evidence.commands import CommandDesk
from lender.evidence.log import lender_identity
from telemetry.command import Command, Configure, Outcome, Permit, accept, outcome_records
from tests.kit.evidence import EvidenceLender, downgrade_to_schema_2
from tests.kit.pledge import ASSET


@pytest.fixture
def lender(tmp_path):
    lender = EvidenceLender(tmp_path / "lender")
    yield lender
    lender.close()


def desk_of(lender: EvidenceLender) -> CommandDesk:
    return CommandDesk(lender.store, lender_identity(lender.data_dir), clock=lambda: lender.now)


def test_commands_are_numbered_per_device_and_signed_by_the_key_devices_pin(lender):
    desk = desk_of(lender)
    first = desk.inspect("gw-1", "staff-li")
    second = desk.issue("gw-1", Configure(1, b"[rules]\n"), "staff-li")
    other = desk.inspect("gw-2", "staff-li")
    assert (first.seq, second.seq, other.seq) == (1, 2, 1)
    command = accept(second.raw, lender.key, "gw-1", first.seq, lender.now)
    assert command.body == Configure(1, b"[rules]\n") and command.digest == second.digest
    assert [c.issuer for c in lender.store.issued_commands("gw-1")] == ["staff-li", "staff-li"]


def test_the_audit_shows_issued_delivered_expired_and_what_the_device_signed(lender):
    gateway = lender.enroll("gw-1")
    desk = desk_of(lender)
    inspection = desk.inspect("gw-1", "staff-li")
    permit = desk.issue("gw-1", Permit(ASSET, int(lender.now), int(lender.now) + 3600, "release of goods, C-1"),
                        "staff-li")
    assert [state for _, state, _ in desk.audit("gw-1")] == ["issued", "issued"]
    lender.store.mark_delivered("gw-1", inspection.seq, lender.now)
    assert [state for _, state, _ in desk.audit("gw-1")] == ["delivered", "issued"]
    assert desk.snapshot(inspection) is None

    signed = Command.verify(inspection.raw, lender.key)
    lender.deliver(gateway, gateway.sign(outcome_records(signed, Outcome.APPLIED, lender.now)))
    answer = desk.snapshot(inspection)
    assert answer is not None and answer.outcome == "applied"
    assert [c.seq for c in desk.pending("gw-1")] == [permit.seq]
    lender.now += 2 * 24 * 3600
    assert [state for _, state, _ in desk.audit("gw-1")] == ["applied", "expired"]
    assert desk.pending("gw-1") == []


def test_a_forged_answer_from_another_device_does_not_mark_a_command_applied(lender):
    lender.enroll("gw-1")
    intruder = lender.enroll("gw-2")
    desk = desk_of(lender)
    inspection = desk.inspect("gw-1", "staff-li")
    signed = Command.verify(inspection.raw, lender.key)
    lender.deliver(intruder, intruder.sign(outcome_records(signed, Outcome.APPLIED, lender.now)))
    assert desk.snapshot(inspection) is None
    assert [state for _, state, _ in desk.audit("gw-1")] == ["issued"]


def test_lender_commands_lists_the_audit_as_json(lender):
    CommandDesk(lender.store, lender_identity(lender.data_dir)).inspect("gw-1", "staff-li")  # the CLI's clock
    code, out, err = lender.cli("commands", "--device", "gw-1", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["device"], r["seq"], r["kind"], r["state"], r["issuer"]) for r in rows] == [
        ("gw-1", 1, "inspect", "issued", "staff-li")]


def test_a_store_from_before_commands_is_migrated_and_keeps_its_evidence(lender):
    gateway = lender.enroll("gw-1")
    lender.readings(gateway, 3)
    lender.close()
    downgrade_to_schema_2(lender.data_dir)
    lender.open()
    assert len(list(lender.store.envelopes("gw-1"))) == 3
    assert desk_of(lender).inspect("gw-1", "staff-li").seq == 1


def test_lender_inspect_exits_non_zero_when_no_snapshot_arrives_in_time(lender):
    lender.enroll("gw-1")
    code, _, err = lender.cli("inspect", "gw-1", "--wait", "0.2", "--by", "staff-li")
    assert code != 0 and "no snapshot from gw-1 within 0.2 s" in err
    assert [(c.kind, c.issuer) for c in lender.store.issued_commands("gw-1")] == [("inspect", "staff-li")]


def test_lender_permit_goes_to_every_device_of_the_asset_and_configure_refuses_what_is_not_toml(lender, tmp_path):
    lender.enroll("gw-1")
    code, out, err = lender.cli("permit", ASSET, "--from", "2030-01-01T08:00", "--until", "2030-01-01T12:00",
                                "--reason", "release of goods, contract C-17")
    assert code == 0, err
    command = Command.verify(lender.store.issued_commands("gw-1")[0].raw, lender.key)
    assert command.body == Permit(ASSET, 1893484800, 1893499200, "release of goods, contract C-17")
    bad, good = tmp_path / "bad.toml", tmp_path / "good.toml"
    bad.write_text("[rules\n")
    good.write_text("[rules]\nheartbeat_s = 900\n")
    code, _, err = lender.cli("configure", "gw-1", bad)
    assert code != 0 and "not a TOML document" in err
    code, out, err = lender.cli("configure", "gw-1", good)
    assert code == 0 and "seq 2, version 1" in out, err
