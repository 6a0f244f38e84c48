"""A gateway whose key is P-256 (a TPM's: ES256) is registered, stored, listed and verified offline beside EdDSA ones."""
import json

import pytest

from lender.evidence.registry import Device, KeyStorage, parse_public_key
from lender.exc import InvalidDeviceError
from telemetry import cbor
from telemetry.cbor import Tag
from telemetry.identity import P256Identity
from tests.kit.evidence import EvidenceLender
from tests.kit.pledge import Gateway

P256_SECRET = bytes.fromhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")


@pytest.fixture
def lender(tmp_path):
    lender = EvidenceLender(tmp_path / "lender")
    yield lender
    lender.close()


def register_es256(lender: EvidenceLender, name: str = "gw-tpm-1") -> Gateway:
    gateway = Gateway(name, clock=lambda: lender.now, identity=P256Identity(P256_SECRET))
    code, _, err = lender.cli("register", "--device", name, "--public-key", gateway.identity.public_key.hex(),
                              "--no-oscore")
    assert code == 0, err
    return gateway


def test_devices_json_names_each_devices_algorithm_and_key_storage(lender):
    register_es256(lender)
    lender.enroll("gw-soft-1")
    code, out, _ = lender.cli("devices", "--json")
    rows = {row["device"]: row for row in json.loads(out)}
    assert code == 0
    assert (rows["gw-tpm-1"]["algorithm"], rows["gw-tpm-1"]["key_storage"]) == ("ES256", "software")
    assert (rows["gw-soft-1"]["algorithm"], rows["gw-soft-1"]["key_storage"]) == ("EdDSA", "software")
    assert len(bytes.fromhex(rows["gw-tpm-1"]["public_key_hex"])) == 65


def test_es256_envelopes_are_stored_and_verify_offline_with_the_keys_file(lender, tmp_path):
    gateway = register_es256(lender)
    sent = [gateway.reading(4.0 + i) for i in range(5)]
    ack = lender.deliver(gateway, *sent)
    assert list(ack.stored) == [e.seq for e in sent]
    code, out, err = lender.cli("export", "--device", "gw-tpm-1", "--format", "jsonl")
    assert code == 0, err
    (tmp_path / "export.jsonl").write_text(out)
    (tmp_path / "keys.json").write_text(lender.cli("devices", "--json")[1])
    code, out, err = lender.cli("verify", tmp_path / "export.jsonl", "--keys", tmp_path / "keys.json")
    assert code == 0, out + err


def test_an_es256_envelope_relabelled_eddsa_is_refused_and_nothing_is_stored(lender):
    gateway = register_es256(lender)
    envelope = gateway.reading()
    parts = cbor.decode(envelope.raw).value
    relabelled = cbor.encode(Tag(18, [cbor.encode({1: -8, 4: envelope.kid}), {}, parts[2], parts[3]]))
    outcome = lender.ingest.batch(cbor.encode([relabelled]), peer="198.51.100.7:5683")
    assert lender.store.counts().envelopes == 0
    assert outcome.ack()  # a refusal, answered


def test_a_keys_file_whose_algorithm_disagrees_with_its_key_is_refused(lender, tmp_path):
    register_es256(lender)
    rows = json.loads(lender.cli("devices", "--json")[1])
    rows[0]["algorithm"] = "EdDSA"
    (tmp_path / "keys.json").write_text(json.dumps(rows))
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = lender.cli("verify", tmp_path / "empty.jsonl", "--keys", tmp_path / "keys.json")
    assert code != 0 and "algorithm" in err


def test_the_registry_takes_p256_points_and_refuses_what_is_not_one():
    key = P256Identity(P256_SECRET).public_key
    assert parse_public_key(key.hex()) == key
    device = Device(device="gw-tpm-1", public_key=key, registered_at=0.0)
    assert (device.algorithm, device.key_storage) == ("ES256", KeyStorage.SOFTWARE)
    for bad in ("04" + "00" * 64, "abcd", "05" + key.hex()[2:]):
        with pytest.raises(InvalidDeviceError, match="P-256"):
            parse_public_key(bad)
    with pytest.raises(InvalidDeviceError, match="ES256 key"):
        Device(device="gw-tpm-1", public_key=key, registered_at=0.0, algorithm="EdDSA")


def test_an_es256_gateways_evidence_bundle_verifies_with_nothing_but_the_lenders_key(lender, tmp_path):
    gateway = register_es256(lender)
    lender.deliver(gateway, *[gateway.reading(4.0 + i) for i in range(4)])
    lender.bundle("gw-tpm-1", tmp_path / "bundle.json")
    code, report = lender.verify(tmp_path / "bundle.json")
    assert code == 0, report


def test_the_devices_table_shows_each_key_as_algorithm_and_storage(lender):
    register_es256(lender)
    code, out, _ = lender.cli("devices")
    assert code == 0 and "KEY" in out.splitlines()[0] and "ES256/software" in out


def test_lender_status_names_each_assets_key_storage(lender):
    gateway = lender.enroll("gw-soft-1")
    lender.deliver(gateway, gateway.manifest(), gateway.reading())
    code, out, err = lender.cli("status", "--json")
    assert code == 0, err
    rows = [r for r in json.loads(out) if r["device"] == "gw-soft-1"]
    assert rows and {(r["algorithm"], r["key_storage"]) for r in rows} == {("EdDSA", "software")}
    code, out, _ = lender.cli("status")
    assert "key           EdDSA, software" in out
