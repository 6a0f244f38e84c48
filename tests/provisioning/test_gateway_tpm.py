"""`provision gateway --key-store tpm` against a software TPM (swtpm): the key is made in the TPM, the enrollment
request is version 2 (a P-256 key, ES256), the agent signs with the TPM key, and the lender's evidence of it verifies
offline; a missing TPM, a TPM in lockout and an owner password are each one line, with nothing written."""
from __future__ import annotations

import json

import pytest

from agent import config as agent_config
from pledgewatch.cli import main as pledgewatch_main
from telemetry.enrollment import EnrollmentRequest
from tests.kit.swtpm import Swtpm, swtpm_available

from .conftest import AgentProcess, wait_for
from .test_gateway_enrollment import agent_delivers, failure_line, files_under, stored_seqs

pytestmark = pytest.mark.skipif(not swtpm_available(), reason="swtpm and tpm2-pytss are needed "
                                "(make test installs swtpm, swtpm-tools, tpm2-tools, libtss2-dev)")


@pytest.fixture
def tpm(tmp_path):
    with Swtpm(tmp_path / "tpm-state") as running:
        yield running


def test_a_tpm_gateway_enrolls_its_evidence_verifies_and_a_copy_of_all_its_files_gets_nothing_accepted(
        site, tpm, capsys, tmp_path):
    site.lender.start()
    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti) == 0
    out = capsys.readouterr().out
    assert "ES256 in the TPM), enrolled" in out
    assert "device.key" not in files_under(site.etc) and "device.keystore" in files_under(site.etc)
    description = json.loads((site.etc / "device.keystore").read_text())
    assert description["kind"] == "tpm" and description["tcti"] == tpm.tcti
    config = agent_config.load(site.etc / "agent.toml")
    assert config.device.key_store == "tpm"
    journal = json.loads((site.etc / "provisioning.json").read_text())
    assert (journal["key_store"], journal["algorithm"]) == ("tpm", "ES256")
    # the lender holds the version 2 request with the TPM's P-256 key, and registered that key
    record = json.loads((site.lender.data / "enroll" / "requests" / "gw-0001.json").read_text())
    import base64
    request = EnrollmentRequest.decode(base64.b64decode(record["request_b64"]))
    assert request.body.version == 2 and request.body.public_key.hex() == description["public_key_hex"]
    code = pledgewatch_main(["lender", "devices", "--data", str(site.lender.data), "--json"])
    rows = {row["device"]: row for row in json.loads(capsys.readouterr().out)}
    assert code == 0 and (rows["gw-0001"]["algorithm"], rows["gw-0001"]["public_key_hex"]) == (
        "ES256", description["public_key_hex"])
    # re-running keeps the TPM key and the enrollment
    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti) == 0
    assert "(kept, ES256 in the TPM), already enrolled" in capsys.readouterr().out
    # the agent signs with the TPM key; the lender verifies and stores what it sends
    agent_delivers(site, 2, "two verified envelopes at the lender")
    # and offline: the device's bundle verifies with nothing but the lender's key
    bundle_verifies_offline(site, tmp_path, capsys)
    # the seed-copy attack of issue 14: every file of this gateway (agent.toml, device.keystore, the OSCORE
    # context, spool and state) copied to a laptop whose own TPM is a second swtpm, continuing the chain from there
    import shutil

    from durable.keystore import create_tpm_key
    from telemetry.ack import Reason
    honest, _ = stored_seqs(site)
    laptop = tmp_path / "laptop"
    shutil.copytree(site.etc, laptop / "etc")
    shutil.copytree(site.var, laptop / "var")
    config = laptop / "etc" / "agent.toml"
    config.write_text(config.read_text().replace(str(site.var), str(laptop / "var")))
    description_path = laptop / "etc" / "device.keystore"
    description = json.loads(description_path.read_text())
    with Swtpm(tmp_path / "laptop-tpm") as other:
        description_path.write_text(json.dumps({**description, "tcti": other.tcti}))
        # as copied: the laptop's TPM holds no key at that handle, and the agent does not start
        copied = AgentProcess(config)
        assert copied.process.wait(timeout=30) != 0 and "holds no device key" in copied.stop()
        # a key of the borrower's own at that handle is not the provisioned key: still no start
        forged = create_tpm_key(other.tcti, int(description["handle"], 16))
        forged_key = forged.public_key
        forged.close()
        copied = AgentProcess(config)
        assert copied.process.wait(timeout=30) != 0 and "not the TPM this gateway was provisioned with" in copied.stop()
        # the description edited to name the laptop's key: the agent runs, continues the chain from the copied spool
        # and state with the copied OSCORE context, and the lender refuses every envelope it signs
        description_path.write_text(json.dumps({**description, "tcti": other.tcti, "public_key_hex": forged_key.hex()}))
        copied = AgentProcess(config)
        from telemetry.identity import kid_of

        def refused():
            with site.store() as store:
                return [q for q in store.quarantined(limit=1000) if q.kid == kid_of(forged_key)]
        try:
            rows = wait_for(refused, what="the lender refusing the laptop's envelopes")
        finally:
            copied.stop()
    assert {q.reason for q in rows} == {Reason.UNKNOWN_KEY}, rows
    assert stored_seqs(site)[0] == honest  # nothing from the laptop was stored as the device's


def test_no_tpm_is_one_line_and_nothing_is_written(site, capsys):
    assert site.provision("--key-store", "tpm", "--tcti", "swtpm:host=127.0.0.1,port=9") == 1
    assert "no TPM answers at 'swtpm:host=127.0.0.1,port=9'" in failure_line(capsys.readouterr().err)
    assert files_under(site.etc) == [] and files_under(site.var) == []


def test_a_tpm_in_lockout_is_one_line_and_nothing_is_written(site, tpm, capsys):
    from tpm2_pytss import ESAPI
    esapi = ESAPI(tpm.tcti)
    esapi.dictionary_attack_parameters(0, 600, 600)  # no tries left: the TPM is in dictionary-attack lockout
    esapi.close()
    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti) == 1
    assert "is in dictionary-attack lockout" in failure_line(capsys.readouterr().err)
    assert files_under(site.etc) == [] and files_under(site.var) == []


def test_an_owner_hierarchy_password_is_one_line_and_nothing_is_written(site, tpm, capsys):
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR
    esapi = ESAPI(tpm.tcti)
    esapi.hierarchy_change_auth(ESYS_TR.OWNER, b"set-by-the-integrator")
    esapi.close()
    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti) == 1
    assert "has an owner hierarchy password" in failure_line(capsys.readouterr().err)
    assert files_under(site.etc) == [] and files_under(site.var) == []


# --- attestation at enrollment: the EK certificate chain, TPM2_Certify, the credential -------------------------

@pytest.fixture(scope="module")
def tpm_factory(tmp_path_factory):
    """A TPM 'from the factory' (an EK and its certificate by a local test CA standing in for the maker), made
    once; each test runs a copy of its state. The CA certificates are what a lender configures to trust."""
    from tests.kit.swtpm import manufacture, manufacturing_available
    if not manufacturing_available():
        pytest.skip("swtpm_setup and swtpm_localca (swtpm-tools) are needed")
    root = tmp_path_factory.mktemp("tpm-factory")
    return root / "template", manufacture(root / "template", root / "ca")


@pytest.fixture
def attested_tpm(tpm_factory, tmp_path):
    import shutil
    template, cas = tpm_factory
    shutil.copytree(template, tmp_path / "attested-tpm")
    with Swtpm(tmp_path / "attested-tpm") as running:
        yield running, cas


def trust(site, cas) -> None:
    """The lender's list of TPM manufacturer CAs: DATA/enroll/tpm-manufacturers/*.pem."""
    folder = site.lender.data / "enroll" / "tpm-manufacturers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test-maker.pem").write_bytes(b"".join(path.read_bytes() for path in cas))


def require_hardware_keys(site, required: bool = True) -> None:
    (site.lender.data / "enroll" / "policy.toml").write_text(f"require_hardware_key = {str(required).lower()}\n")


def listed(site, capsys) -> dict:
    capsys.readouterr()
    assert pledgewatch_main(["lender", "devices", "--data", str(site.lender.data), "--json"]) == 0
    return {row["device"]: row for row in json.loads(capsys.readouterr().out)}


def test_an_attested_tpm_gateway_is_enrolled_and_listed_tpm_attested_where_hardware_keys_are_required(
        site, attested_tpm, capsys):
    tpm, cas = attested_tpm
    trust(site, cas)
    require_hardware_keys(site)
    site.lender.start()
    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti) == 0
    out = capsys.readouterr().out
    assert "enrolled" in out and "checked the TPM's attestation" in out
    # the OSCORE context opened only after the TPM activated the lender's credential: it is installed
    assert (site.etc / "oscore" / "secret.json").exists()
    record = json.loads((site.lender.data / "enroll" / "requests" / "gw-0001.json").read_text())
    assert record["key_storage"] == "tpm-attested" and len(record["ek_certificate_sha256"]) == 64
    row = listed(site, capsys)["gw-0001"]
    assert (row["algorithm"], row["key_storage"]) == ("ES256", "tpm-attested")
    assert pledgewatch_main(["lender", "status", "--data", str(site.lender.data), "--json"]) == 0
    shown = {s["device"]: s for s in json.loads(capsys.readouterr().out)}
    assert shown["gw-0001"]["key_storage"] == "tpm-attested"
    # the enrollment in the lender's log (the attested version 2 request) verifies offline from a bundle
    bundle_verifies_offline(site, site.root, capsys)


def test_a_lender_requiring_hardware_keys_refuses_a_software_key_and_otherwise_lists_it_software(site, tpm, capsys):
    plain = site.lender.argv
    site.lender.argv = plain + ("--require-hardware-key",)  # lender serve --require-hardware-key
    site.lender.start()
    assert site.provision() == 1
    assert "enrolls hardware keys only" in failure_line(capsys.readouterr().err)
    assert files_under(site.etc) == []
    site.lender.stop()
    site.lender.argv = plain  # without the option (and no policy file): software keys are enrolled, labelled so
    site.lender.start()
    assert site.provision() == 0
    assert listed(site, capsys)["gw-0001"]["key_storage"] == "software"
    # and a software gateway is not silently switched to the TPM (a new identity needs --rotate)
    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti) == 1
    assert "is a software key already" in failure_line(capsys.readouterr().err)
    assert "device.keystore" not in files_under(site.etc)


def test_a_tpm_without_an_ek_certificate_or_an_untrusted_maker_is_refused_and_an_offline_attested_request_submitted(
        site, tpm, attested_tpm, capsys):
    require_hardware_keys(site)
    site.lender.start()
    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti) == 1  # swtpm without swtpm_setup: no EK cert
    assert "enrolls hardware keys only" in failure_line(capsys.readouterr().err)
    made, cas = attested_tpm  # an EK certificate, but this lender trusts no maker yet
    assert site.provision("--key-store", "tpm", "--tcti", made.tcti) == 1
    assert "trusts no TPM manufacturer CA" in failure_line(capsys.readouterr().err)
    assert files_under(site.etc) == []
    # the lender's staff add the maker; the gateway, offline now, keeps its attested request for later...
    trust(site, cas)
    assert site.provision("--key-store", "tpm", "--tcti", made.tcti, "--lender", "coap://127.0.0.1:9") == 0
    assert "pending" in capsys.readouterr().out
    # ...and `provision submit` on the gateway sends it and installs the answer: the TPM activates the credential
    request = site.var / "enrollment" / "request.cbor"
    code = pledgewatch_main(["provision", "submit", str(request), "--config", str(site.etc / "agent.toml"),
                             "--profile", str(site.profile.path), "--user", "root"])
    assert code == 0, capsys.readouterr().err
    assert (site.etc / "oscore" / "secret.json").exists() and not request.exists()
    assert listed(site, capsys)["gw-0001"]["key_storage"] == "tpm-attested"


def test_a_forged_attestation_is_refused_and_another_tpm_cannot_activate_the_credential(attested_tpm, tmp_path,
                                                                                        tpm_factory):
    """What the lender's checks catch (lender.enrollment.attestation) and what only credential activation can:
    a copied EK certificate presented with a key of another TPM."""
    import dataclasses
    import os
    import shutil
    import time

    from cryptography import x509

    from durable.keystore import activate_credential, attest_tpm_key, create_device_key
    from lender.enrollment import attestation
    from telemetry.enrollment import AssetBinding, EnrollmentBody, TpmAttestation, certify_data

    tpm, cas = attested_tpm
    trusted = [c for path in cas for c in x509.load_pem_x509_certificates(path.read_bytes())]
    key = create_device_key(tmp_path / "gw", "tpm", tcti=tpm.tcti, handle=0x81010058)
    try:
        nonce = os.urandom(16)
        evidence = TpmAttestation(**attest_tpm_key(key, certify_data("gw-1", nonce)))
        body = EnrollmentBody("gw-1", "gateway", key.public_key, "tech-ana", {}, AssetBinding("asset-1"),
                              int(time.time()), nonce, bytes(32), evidence)
        assert EnrollmentBody.decode(body.encode()) == body
        credential = attestation.verify(body, trusted)
        assert activate_credential(key, credential.id_object, credential.encrypted_secret) == credential.secret
        for changed, why in (
                (dataclasses.replace(body, nonce=os.urandom(16)), "made for another request"),
                (dataclasses.replace(body, device="gw-2"), "made for another request"),
                (dataclasses.replace(body, attestation=dataclasses.replace(
                    evidence, certify_info=evidence.certify_info[:-1] + bytes([evidence.certify_info[-1] ^ 1]))),
                 "does not verify|another key|another request"),
        ):
            with pytest.raises(attestation.AttestationError, match=why):
                attestation.verify(changed, trusted)
        roots_only = [c for c in trusted if c.subject == c.issuer]  # the maker's issuing CA not among them
        with pytest.raises(attestation.AttestationError, match="does not chain"):
            attestation.verify(body, roots_only)
    finally:
        key.close()
    # another TPM of the same maker cannot recover the secret of a credential made for this one's EK
    from tests.kit.swtpm import manufacture
    manufacture(tmp_path / "other-tpm", tpm_factory[0].parent / "ca")
    with Swtpm(tmp_path / "other-tpm") as other:
        stranger = create_device_key(tmp_path / "laptop", "tpm", tcti=other.tcti, handle=0x81010058)
        try:
            with pytest.raises(Exception):
                activate_credential(stranger, credential.id_object, credential.encrypted_secret)  # KeyStoreError
        finally:
            stranger.close()


def test_rotating_a_tpm_key_retires_its_description_and_replaces_the_key_in_the_tpm(site, tpm, capsys):
    from durable.keystore import open_device_key
    from durable.exc import TpmKeyMismatchError

    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti) == 0  # no lender yet: pending
    first = json.loads((site.etc / "device.keystore").read_text())
    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti, "--rotate") == 0
    assert "(rotated, ES256 in the TPM)" in capsys.readouterr().out
    second = json.loads((site.etc / "device.keystore").read_text())
    retired = [p for p in site.etc.iterdir() if p.name.startswith("device.keystore.retired-")]
    assert second["public_key_hex"] != first["public_key_hex"] and len(retired) == 1
    assert json.loads(retired[0].read_text())["public_key_hex"] == first["public_key_hex"]
    key = open_device_key(site.etc, kind="tpm")  # the handle holds the new key...
    key.close()
    assert key.public_key.hex() == second["public_key_hex"]
    with pytest.raises(TpmKeyMismatchError):  # ...and the old one is gone from the chip
        _open_described(retired[0])


def _open_described(path):
    """Open the key a (retired) description names, as the agent would."""
    import shutil
    import tempfile

    from durable.keystore import KEYSTORE_FILE, open_device_key
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(path, f"{folder}/{KEYSTORE_FILE}")
        return open_device_key(folder, kind="tpm")


def bundle_verifies_offline(site, folder, capsys) -> None:
    """gw-0001's bundle, exported into `folder`, verifies with nothing but the lender's public key."""
    bundle = folder / "gw-0001.bundle.json"
    assert pledgewatch_main(["lender", "export", "--data", str(site.lender.data), "--device", "gw-0001",
                             "--format", "bundle", "--output", str(bundle)]) == 0
    assert pledgewatch_main(["lender", "key", "--data", str(site.lender.data)]) == 0
    lender_key = capsys.readouterr().out.strip().splitlines()[-1]
    code = pledgewatch_main(["lender", "verify", str(bundle), "--lender-key", lender_key, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report
