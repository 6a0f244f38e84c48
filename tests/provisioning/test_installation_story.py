"""The whole installation, as a technician does it on site, against simulators and a real lender on loopback."""
from __future__ import annotations

import asyncio
import json

import nacl.signing
from gpiozero.pins.mock import MockFactory

from lender.enrollment.desk import installation_reports
from pledgewatch.cli import main as pledgewatch_main
from provisioning.check import CheckOptions, report_and_send, run_checks

from .conftest import AgentProcess, wait_for
from .test_preflight_check import technician_opens_and_closes_the_door


def envelope_count(site) -> int:
    with site.store() as store:
        return len(list(store.envelopes("gw-0001")))


def test_gateway_and_node_are_provisioned_checked_and_the_agents_first_readings_verify(site, board, tmp_path, capsys):
    site.lender.start()
    # 1. the gateway: identity, modem, asset, enrollment, config, systemd unit
    assert site.provision("--install-systemd", "--systemd-dir", str(tmp_path / "systemd"), "--json") == 0
    gateway = json.loads(capsys.readouterr().out)
    assert gateway["enrollment"] == "enrolled" and gateway["modem"]["imei"] == "867698040123450"
    # 2. a node on the laptop's USB port
    (tmp_path / "node.json").write_text(json.dumps({"modem": {"model": "sim7080g"}}))
    assert pledgewatch_main(["provision", "node", "--port", board.path, "--device-id", "node-0042",
                             "--asset-file", str(site.site_file), "--node-config", str(tmp_path / "node.json"),
                             "--profile", str(site.profile.path), "--pace", "0", "--json"]) == 0
    node = json.loads(capsys.readouterr().out)
    assert node["enrollment"] == "enrolled" and node["key"] == "created"
    # 3. the pre-flight, with the technician opening the door when asked
    factory = MockFactory()
    options = CheckOptions(site.etc / "agent.toml", site.profile, site.lender.uri, modem_port=site.modem.path,
                           pin_factory=factory, ask=technician_opens_and_closes_the_door(factory.pin(17)),
                           tamper_wait=10, timeout=15)
    run, (config, identity) = asyncio.run(run_checks(options))
    assert run.passed, run.results
    report_and_send(options, run, config, identity)
    assert len(installation_reports(site.lender.data, "gw-0001")) == 1
    # 4. the agent starts as systemd would start it, and the lender verifies what it sends
    with site.store() as store:
        before = len(list(store.envelopes("gw-0001")))
    agent = AgentProcess(site.etc / "agent.toml")
    try:
        wait_for(lambda: envelope_count(site) >= before + 3, what="the agent's first readings at the lender")
    finally:
        agent.stop()
    with site.store() as store:
        seqs = [e.seq for e in store.envelopes("gw-0001")]
        assert seqs == list(range(1, len(seqs) + 1)) and store.missing_ranges("gw-0001") == []
        devices = {d.device: d for d in store.devices()}
    assert set(devices) == {"gw-0001", "node-0042"}
    assert devices["node-0042"].public_key == bytes(
        nacl.signing.SigningKey((board.root / "node.key").read_bytes()).verify_key)
    assert devices["gw-0001"].asset == devices["node-0042"].asset == "asset-7781"
