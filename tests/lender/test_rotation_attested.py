"""A tpm-attested device's key handover keeps `tpm-attested` only with TPM2_Certify of the new key by the attestation
key its enrollment proved (telemetry.rotation `key.next.certify`); without it, or with a bad one, the lender refuses
the handover where it requires hardware keys and otherwise switches and lists the new key `software` with a note.
Both store backends; the TPM's certification made as a TPM makes it (tests.vectors.generate), its real counterpart
against swtpm in tests/tpm/test_rotation.py."""
import dataclasses
import json

import pytest

from lender.enrollment.desk import with_recorded_key_storage
from lender.enrollment.technicians import enroll_dir
from lender.evidence.commands import CommandDesk
from lender.evidence.ingest import Ingest
from lender.evidence.log import lender_identity
from lender.evidence.registry import Device, KeyStorage
from lender.evidence.risks import Judge, device_risks
from telemetry import cbor
from telemetry.ack import Reason
from telemetry.command import Command
from telemetry.identity import P256Identity
from telemetry.rotation import NEXT_CERTIFY, certify_data, encode_certification, handover_records
from tests.telemetry.test_rotation import T0, Chain
from tests.vectors.generate import tpm_certify, tpm_key_public

pytestmark = pytest.mark.backends

OLD, NEW, NEWER = (P256Identity(bytes([n]) * 32) for n in (7, 8, 9))
AK, OTHER_AK = P256Identity(bytes([10]) * 32), P256Identity(bytes([11]) * 32)


def certified(command, old, new, ak=AK, *, attributes=None, qualifying=None):
    """The records of a handover carrying TPM2_Certify of `new` by `ak` (as a TPM makes it)."""
    key_public = tpm_key_public(new.public_key) if attributes is None else tpm_key_public(new.public_key, attributes)
    attest, signature = tpm_certify(ak, key_public, qualifying or certify_data(command.device, old.kid,
                                                                               new.public_key, command.digest))
    return handover_records(command, old.kid, new, T0 + 10, encode_certification(key_public, attest, signature))


def enrolled(data_dir, store, storage="tpm-attested"):
    """gw-1 registered on OLD with its enrollment record (as lender.enrollment.desk writes it)."""
    store.add_device(Device("gw-1", OLD.public_key, registered_at=T0))
    record = enroll_dir(data_dir) / "requests" / "gw-1.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"device": "gw-1", "key_storage": storage,
                                  "attestation_key_hex": AK.public_key.hex() if storage == "tpm-attested" else None}))


def rotate_key(data_dir, store):
    issued = CommandDesk(store, lender_identity(data_dir), clock=lambda: T0).rotate_key("gw-1", "staff")
    return Command.verify(issued.raw, lender_identity(data_dir).public_key)


def deliver(store, *envelopes, **options):
    return Ingest(store, clock=lambda: T0 + 100, **options).batch(cbor.encode([e.raw for e in envelopes]), peer="test")


def shown(data_dir, store):
    """What `lender devices --json` shows of gw-1."""
    return with_recorded_key_storage(data_dir, store.device("gw-1")).to_json()


def test_a_certified_handover_keeps_the_device_tpm_attested_across_two_rotations(data_dir, store):
    enrolled(data_dir, store)
    chain = Chain()
    first = rotate_key(data_dir, store)
    outcome = deliver(store, chain.sign(OLD, certified(first, OLD, NEW)), chain.sign(NEW))
    assert outcome.stored == (1, 2) and not outcome.refused, outcome.refused
    row = shown(data_dir, store)
    assert (row["kid"], row["key_storage"], row["key_storage_note"]) == (NEW.kid.hex(), "tpm-attested", None)
    second = rotate_key(data_dir, store)
    assert deliver(store, chain.sign(NEW, certified(second, NEW, NEWER))).stored == (3,)
    assert shown(data_dir, store)["key_storage"] == "tpm-attested" and store.device("gw-1").kid == NEWER.kid


def forged(command, case):
    """A handover from the tpm-attested gw-1 whose certification does not prove the new key is in its TPM."""
    good = certified(command, OLD, NEW)
    if case == "none":
        return [r for r in good if r.name != NEXT_CERTIFY]
    if case == "another TPM's AK":
        return certified(command, OLD, NEW, OTHER_AK)
    if case == "another handover's":
        return certified(command, OLD, NEW, qualifying=bytes(32))
    if case == "not fixedTPM":
        return certified(command, OLD, NEW, attributes=0x00040070)
    if case == "another key's public area":   # made for this handover, but of another key than the one named
        other = certified(command, OLD, NEWER, qualifying=certify_data(command.device, OLD.kid, NEW.public_key,
                                                                       command.digest))
        return good[:-1] + other[-1:]
    assert case == "edited"
    version, key_public, attest, signature = cbor.decode(good[-1].data)
    attest = attest[:-40] + bytes([attest[-40] ^ 1]) + attest[-39:]
    return good[:-1] + [dataclasses.replace(good[-1], data=cbor.encode([version, key_public, attest, signature]))]


CASES = {"none": "carries no key.next.certify", "another TPM's AK": "signature over the new key's certification",
         "another handover's": "made for another handover", "not fixedTPM": "not made inside the TPM",
         "another key's public area": "not the handover's new key", "edited": "signature over the new key's"}


@pytest.mark.parametrize("case", CASES)
def test_a_handover_without_a_valid_certification_switches_to_a_software_key_with_a_note(data_dir, store, case):
    enrolled(data_dir, store)
    command = rotate_key(data_dir, store)
    outcome = deliver(store, Chain().sign(OLD, forged(command, case)))
    assert outcome.stored == (1,) and not outcome.refused, outcome.refused
    row = shown(data_dir, store)
    assert row["kid"] == NEW.kid.hex() and row["key_storage"] == "software", row
    assert "without proof that its TPM holds it" in row["key_storage_note"] and CASES[case] in row["key_storage_note"]
    assert store.device("gw-1").key_storage is KeyStorage.SOFTWARE
    assert [r.detail for r in device_risks(store, "gw-1", Judge(now=T0)) if r.kind == "key"] == \
        [row["key_storage_note"]], "lender status names it: the asset is not OK while it lasts"
    # a later certified rotation does not bring the label back: the new key's TPM is no longer the one proven
    again = rotate_key(data_dir, store)
    deliver(store, Chain().sign(NEW, certified(again, NEW, NEWER), seq=2, prev=store.envelope("gw-1", 1).digest))
    assert shown(data_dir, store)["key_storage"] == "software"


@pytest.mark.parametrize("case", ("none", "another TPM's AK", "edited"))
def test_a_lender_requiring_hardware_keys_refuses_the_handover(data_dir, store, case):
    enrolled(data_dir, store)
    (enroll_dir(data_dir) / "policy.toml").write_text("require_hardware_key = true\n")
    command = rotate_key(data_dir, store)
    outcome = deliver(store, Chain().sign(OLD, forged(command, case)))
    assert [r.reason for r in outcome.refused] == [Reason.MALFORMED] and "requires hardware keys" in \
        outcome.refused[0].text, outcome.refused
    assert store.device("gw-1").kid == OLD.kid and store.retired_keys() == []
    assert shown(data_dir, store)["key_storage"] == "tpm-attested"   # the enrolled key, still in force
    # the option on serve refuses as the policy file does (here the option says no, overriding the file)
    assert deliver(store, Chain().sign(OLD, forged(command, case)), require_hardware_key=False).stored == (1,)


def test_a_software_device_rotates_and_stays_software_whatever_its_handover_carries(data_dir, store):
    enrolled(data_dir, store, storage="software")
    command = rotate_key(data_dir, store)
    assert deliver(store, Chain().sign(OLD, certified(command, OLD, NEW))).stored == (1,)
    row = shown(data_dir, store)
    assert (row["kid"], row["key_storage"], row["key_storage_note"]) == (NEW.kid.hex(), "software", None)


def test_lender_migrate_from_copies_the_rotated_keys_storage_and_note(data_dir, postgres):
    from lender.evidence.postgres import PostgresStore
    from lender.evidence.stores import open_store
    from lender.evidence.transfer import copy_store

    with open_store(data_dir, None) as sqlite:
        enrolled(data_dir, sqlite)
        command = rotate_key(data_dir, sqlite)
        assert deliver(sqlite, Chain().sign(OLD, forged(command, "none"))).stored == (1,)
        before = sqlite.device("gw-1").to_json()
    target = PostgresStore.open(postgres.database(), data_dir)
    try:
        copy_store(data_dir, target)
        assert target.device("gw-1").to_json() == before and before["key_storage_note"]
    finally:
        target.close()
