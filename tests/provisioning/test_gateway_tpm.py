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
from .test_gateway_enrollment import failure_line, files_under, stored_seqs

pytestmark = pytest.mark.skipif(not swtpm_available(), reason="swtpm and tpm2-pytss are needed "
                                "(make test installs swtpm, swtpm-tools, tpm2-tools, libtss2-dev)")


@pytest.fixture
def tpm(tmp_path):
    with Swtpm(tmp_path / "tpm-state") as running:
        yield running


def test_a_tpm_gateway_enrolls_with_an_es256_key_and_its_evidence_verifies_at_the_lender_and_offline(
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
    agent = AgentProcess(site.etc / "agent.toml")
    try:
        wait_for(lambda: len(stored_seqs(site)[0]) >= 2, what="two verified envelopes at the lender")
    finally:
        err = agent.stop()
    seqs, missing = stored_seqs(site)
    assert seqs == list(range(1, len(seqs) + 1)) and missing == [], err
    # and offline: the device's bundle verifies with nothing but the lender's key
    bundle = tmp_path / "gw-0001.bundle.json"
    assert pledgewatch_main(["lender", "export", "--data", str(site.lender.data), "--device", "gw-0001",
                             "--format", "bundle", "--output", str(bundle)]) == 0
    assert pledgewatch_main(["lender", "key", "--data", str(site.lender.data)]) == 0
    lender_key = capsys.readouterr().out.strip().splitlines()[-1]
    code = pledgewatch_main(["lender", "verify", str(bundle), "--lender-key", lender_key, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report


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


def test_a_software_gateway_is_not_silently_switched_to_the_tpm(site, tpm, capsys):
    site.lender.start()
    assert site.provision() == 0
    capsys.readouterr()
    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti) == 1
    assert "is a software key already" in failure_line(capsys.readouterr().err)
    assert "device.keystore" not in files_under(site.etc)


def test_every_file_of_a_tpm_gateway_copied_to_another_machine_gets_nothing_accepted_as_the_devices(
        site, tpm, tmp_path, capsys):
    """The seed-copy attack of issue 14 against a TPM gateway: the borrower copies every file (agent.toml, the key's
    description, the OSCORE context, spool and state) to a laptop whose own TPM is a second swtpm, and tries to
    continue the device's chain from there."""
    import shutil

    from durable.keystore import create_tpm_key
    from telemetry.ack import Reason

    site.lender.start()
    assert site.provision("--key-store", "tpm", "--tcti", tpm.tcti) == 0
    agent = AgentProcess(site.etc / "agent.toml")
    try:
        wait_for(lambda: len(stored_seqs(site)[0]) >= 2, what="the gateway's own envelopes at the lender")
    finally:
        agent.stop()
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
