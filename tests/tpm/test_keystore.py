"""A gateway key inside a TPM (swtpm here): created at provisioning, never on disk, ES256 envelopes the lender verifies,
and a copy of every file of the gateway signs nothing the lender accepts as the device's."""
from __future__ import annotations

import json
import shutil

import pytest

from durable.exc import KeyStoreError, TpmKeyMismatchError, TpmUnavailableError
from durable.keystore import KEYSTORE_FILE, create_device_key, open_device_key
from telemetry.ack import Reason
from telemetry.envelope import GENESIS, Counters, seal, verify
from telemetry.identity import DeviceKey, low_s  # noqa: F401  (low_s: the normalisation TpmKey applies)
from telemetry.numbers import ALG_EDDSA, ALG_ES256
from telemetry.senml import Record
from tests.kit.swtpm import Swtpm

FIRST, SECOND, THIRD = 0x81010050, 0x81010051, 0x81010052


def reading(signer, seq=1, prev=GENESIS):
    return seal(signer, device="gw-tpm-1", boot=1, seq=seq, prev=prev, records=[Record("temp", value=4.5, time=1.0)],
                counters=Counters(0, 0))


def test_a_tpm_key_signs_es256_envelopes_the_lender_verifies_and_nothing_secret_is_on_disk(swtpm, tmp_path):
    key = create_device_key(tmp_path, "tpm", tcti=swtpm.tcti, handle=FIRST)
    try:
        assert key.algorithm == ALG_ES256 and len(key.public_key) == 65
        envelopes = [reading(key, seq) for seq in (1, 2, 3)]
        keys = {key.kid: DeviceKey("gw-tpm-1", key.public_key)}
        assert all(verify(e.raw, keys).ok for e in envelopes)
    finally:
        key.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEYSTORE_FILE]
    description = json.loads((tmp_path / KEYSTORE_FILE).read_text())
    assert description["kind"] == "tpm" and description["public_key_hex"] == key.public_key.hex()
    assert (tmp_path / KEYSTORE_FILE).stat().st_mode & 0o077 == 0


def test_the_tpm_key_survives_a_restart_of_the_tpm(tmp_path):
    with Swtpm(tmp_path / "tpm-state") as tpm:
        key = create_device_key(tmp_path / "state", "tpm", tcti=tpm.tcti, handle=FIRST)
        public_key = key.public_key
        key.close()
    with Swtpm(tmp_path / "tpm-state") as tpm:  # a reboot: the same chip, its persistent handle kept
        description = tmp_path / "state" / KEYSTORE_FILE
        item = json.loads(description.read_text())
        item["tcti"] = tpm.tcti  # swtpm came back on other ports; a real board's /dev/tpmrm0 stays put
        description.write_text(json.dumps(item))
        key = open_device_key(tmp_path / "state")
        try:
            assert key.public_key == public_key
            assert verify(reading(key).raw, {key.kid: DeviceKey("gw-tpm-1", public_key)}).ok
        finally:
            key.close()


def test_a_copy_of_every_file_of_the_gateway_signs_nothing_the_lender_accepts(swtpm, second_swtpm, tmp_path):
    gateway = tmp_path / "gateway"
    key = create_device_key(gateway, "tpm", tcti=swtpm.tcti, handle=SECOND)
    lender_keys = {key.kid: DeviceKey("gw-tpm-1", key.public_key)}
    key.close()
    laptop = tmp_path / "laptop"
    shutil.copytree(gateway, laptop)
    item = json.loads((laptop / KEYSTORE_FILE).read_text())
    item["tcti"] = second_swtpm.tcti  # the laptop's own TPM
    (laptop / KEYSTORE_FILE).write_text(json.dumps(item))
    with pytest.raises(KeyStoreError, match="no device key"):
        open_device_key(laptop)
    # The borrower makes a key at the same handle in the laptop's TPM: it is not the enrolled key...
    forged = create_device_key(tmp_path / "forger", "tpm", tcti=second_swtpm.tcti, handle=SECOND)
    try:
        with pytest.raises(TpmKeyMismatchError, match="not the TPM this gateway was provisioned with"):
            open_device_key(laptop)
        # ...and whatever it signs, the lender refuses: unknown key, or a bad signature under the device's kid
        envelope = reading(forged)
        assert verify(envelope.raw, lender_keys).reason is Reason.UNKNOWN_KEY
    finally:
        forged.close()


def test_no_tpm_is_one_clear_line(tmp_path):
    with pytest.raises(TpmUnavailableError) as caught:
        create_device_key(tmp_path, "tpm", tcti="swtpm:host=127.0.0.1,port=9")
    assert "no TPM answers" in str(caught.value) and "\n" not in str(caught.value)


def test_a_taken_handle_is_refused_never_overwritten(swtpm, tmp_path):
    key = create_device_key(tmp_path / "one", "tpm", tcti=swtpm.tcti, handle=THIRD)
    key.close()
    with pytest.raises(KeyStoreError, match="already holds a key"):
        create_device_key(tmp_path / "two", "tpm", tcti=swtpm.tcti, handle=THIRD)


def test_the_software_kind_is_the_seed_file_as_before(tmp_path):
    identity = create_device_key(tmp_path, "software")
    assert identity.algorithm == ALG_EDDSA and (tmp_path / "device.key").stat().st_size == 32
    assert open_device_key(tmp_path).public_key == identity.public_key
    (tmp_path / KEYSTORE_FILE).unlink()
    assert open_device_key(tmp_path).public_key == identity.public_key  # a gateway from before key stores


def test_the_configs_key_store_refuses_a_seed_file_put_in_place_of_a_tpm_gateways_description(tmp_path):
    from durable.exc import KeyStoreConfigError
    create_device_key(tmp_path, "software")
    (tmp_path / KEYSTORE_FILE).unlink()  # a TPM gateway whose description was swapped for a copied seed file
    with pytest.raises(KeyStoreConfigError, match='key_store = "tpm"'):
        open_device_key(tmp_path, kind="tpm")
    (tmp_path / KEYSTORE_FILE).write_text(json.dumps({"kind": "tpm", "tcti": "device:/dev/tpmrm0",
                                                      "handle": "0x81010050", "public_key_hex": None}))
    with pytest.raises(KeyStoreConfigError, match="describes a tpm key"):
        open_device_key(tmp_path, kind="software")
