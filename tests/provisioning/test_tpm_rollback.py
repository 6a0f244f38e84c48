"""Issue 14's rollback attack, end to end with real processes: an attested TPM gateway (swtpm from the 'factory',
`provision gateway --key-store tpm`), its agent as a child process, the lender serving, the rig's proxy between.

The borrower (root on the gateway) copies the state directory and spool, lets the agent sign an alarm while the
uplink is cut, stops it, restores the copy and restarts it with the uplink back: the agent signs those seqs
again and the lender, which never saw the lost ones, holds an unbroken chain. Only the TPM's count, certified
in the first envelope of every boot (durable.tpmcounter, telemetry.tpmcount), shows that signatures went missing:
`lender status --json` names a `rollback` risk. The same gateway restarted honestly, and once killed, shows none.
"""
from __future__ import annotations

import contextlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from pledgewatch.cli import main as pledgewatch_main
from tests.kit.pledged_site import ASSET, Gateway, PledgedSite
from tests.kit.swtpm import Swtpm, manufacture, manufacturing_available

pytestmark = pytest.mark.skipif(not manufacturing_available(), reason="swtpm, swtpm-tools and tpm2-pytss are needed "
                                "(make test installs swtpm, swtpm-tools, tpm2-tools, libtss2-dev)")


def provision_tpm(site: PledgedSite, tcti: str, cas, device: str = "gw-0001") -> Gateway:
    """`provision gateway --key-store tpm` for the pledged asset, at a lender that trusts the TPM's maker."""
    folder = site.data / "enroll" / "tpm-manufacturers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test-maker.pem").write_bytes(b"".join(path.read_bytes() for path in cas))
    gateway = Gateway(site, device, site.root / device)
    code = pledgewatch_main(["provision", "gateway", "--device-id", device, "--no-modem", "--asset", ASSET,
                             "--config-dir", str(gateway.config_dir), "--state-dir", str(gateway.state_dir),
                             "--profile", str(site.profile.path), "--user", "root", "--timeout", "5",
                             "--key-store", "tpm", "--tcti", tcti])
    assert code == 0
    gateway.point_at(site.proxy_uri)
    site.gateways.append(gateway)
    return gateway


def run_and_deliver(site: PledgedSite, gateway: Gateway) -> int:
    """Start the agent and wait until the lender holds this boot's envelopes (its first, with the TPM's count)."""
    before = site.lender_max_seq(gateway.device) or 0
    gateway.start()
    gateway.wait(lambda: (site.lender_max_seq(gateway.device) or 0) > before, what="this boot's first envelope")
    return gateway.wait_delivered()


def status(site: PledgedSite, capsys) -> list[dict]:
    """`pledgewatch lender status --device gw-0001 --json`, run in this process (as the staff's console runs it)."""
    capsys.readouterr()
    assert pledgewatch_main(["lender", "status", "--data", str(site.data), "--device", "gw-0001", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def rollback_risks(site: PledgedSite, capsys) -> list[dict]:
    """The rollback risks `lender status --json` shows for gw-0001 (every asset it watches shows them: once each)."""
    found = [risk for asset in status(site, capsys) for risk in asset["risks"] if risk["kind"] == "rollback"]
    return [risk for n, risk in enumerate(found) if risk not in found[:n]]


def test_a_restored_state_directory_is_flagged_at_the_lender_and_honest_restarts_are_not(tmp_path, capsys):
    with contextlib.ExitStack() as running, ThreadPoolExecutor(1) as factory:
        made = factory.submit(manufacture, tmp_path / "tpm", tmp_path / "ca")  # swtpm_setup while the lender starts
        site = running.enter_context(PledgedSite(tmp_path / "site"))
        cas = made.result()
        tpm = running.enter_context(Swtpm(tmp_path / "tpm"))
        gateway = provision_tpm(site, tpm.tcti, cas)
        # honest: a run, a power cut (SIGKILL), a restart; every boot's count matches its seqs (clean restarts:
        # tests/tpm/test_rollback.py, and the restart after the restore below is one)
        run_and_deliver(site, gateway)
        gateway.unplug()
        run_and_deliver(site, gateway)
        assert {asset["key_storage"] for asset in status(site, capsys)} == {"tpm-attested"}
        honest = rollback_risks(site, capsys)
        # A SIGKILL landing in the few milliseconds between a count and its envelope reaching the spool leaves one
        # count nobody received: the power-loss record explains it, and the lender still shows it until reviewed.
        assert honest == [] or (len(honest) == 1 and "may explain 1" in honest[0]["detail"]), honest
        gateway.stop()
        # the attack: copy, sign an alarm while the uplink is cut, restore, restart with the uplink back
        shutil.copytree(gateway.state_dir, tmp_path / "copy")
        site.network.partition()
        gateway.start()
        site.probe.set_celsius(30.0)
        alarm = gateway.wait_spooled_alarm()
        gateway.stop()
        held = site.lender_max_seq(gateway.device)
        assert held < alarm  # the lender never got it
        shutil.rmtree(gateway.state_dir)
        shutil.copytree(tmp_path / "copy", gateway.state_dir)
        site.probe.set_celsius(4.5)
        site.network.heal()
        run_and_deliver(site, gateway)
        gateway.wait(lambda: site.lender_max_seq(gateway.device) >= alarm,  # the lost seqs signed again, delivered
                     what="the lender to hold the seqs the lost alarm had")
        found = [r for r in rollback_risks(site, capsys) if r not in honest]
        assert len(found) == 1 and "signature(s) the lender never received" in found[0]["detail"], found
        assert "restored from an older copy" in found[0]["detail"] and "gw-0001 boot" in found[0]["detail"]
        gateway.stop()
