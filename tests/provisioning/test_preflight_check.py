"""The pre-flight on a provisioned gateway: simulated modem, mock GPIO tamper switch, real lender over OSCORE."""
from __future__ import annotations

import asyncio
import json
import threading
import time

from gpiozero.pins.mock import MockFactory

from lender.enrollment.desk import installation_reports
from pledgewatch.cli import main as pledgewatch_main
from provisioning.check import CheckOptions, report_and_send, run_checks


def technician_opens_and_closes_the_door(pin):
    def ask(text: str) -> None:
        assert "open the enclosure door" in text

        def door() -> None:
            time.sleep(0.2)
            pin.drive_high()
            time.sleep(0.3)
            pin.drive_low()
        threading.Thread(target=door, daemon=True).start()
    return ask


def test_preflight_passes_records_the_door_test_and_stores_a_signed_report_at_the_lender(site):
    site.lender.start()
    assert site.provision() == 0
    factory = MockFactory()
    options = CheckOptions(site.etc / "agent.toml", site.profile, site.lender.uri, modem_port=site.modem.path,
                           pin_factory=factory, ask=technician_opens_and_closes_the_door(factory.pin(17)),
                           tamper_wait=10, timeout=15)
    run, (config, identity) = asyncio.run(run_checks(options))
    table = {r.name: (r.passed, r.detail) for r in run.results}
    assert list(table) == ["modem registered", "signal", "time synchronized", "sensor temp", "sensor tamper",
                           "tamper switch", "round trip"]
    assert run.passed, table
    assert table["signal"][1] == "RSRP -88 dBm (at least -115)"
    assert table["sensor temp"][1] == "4.5 Cel" and table["sensor tamper"][1] == "closed"
    report_and_send(options, run, config, identity)
    assert run.report_receipt.startswith("report stored as gw-0001/")
    [(path, report)] = installation_reports(site.lender.data, "gw-0001")
    assert report.passed and report.technician == "tech-ana" and [r.name for r in report.results] == list(table)
    with site.store() as store:
        names = [(r.name, r.boolean if r.boolean is not None else r.value) for r in store.readings("gw-0001")]
        missing = store.missing_ranges("gw-0001")
    assert ("tamper", True) in names and ("tamper", False) in names  # the door test is in the evidence
    assert any(name == "check.ping" for name, _ in names) and missing == []


def test_a_weak_signal_and_a_silent_door_fail_the_preflight_with_what_to_do(site, capsys):
    site.lender.start()
    assert site.provision() == 0
    site.modem.set_signal(nr_rsrp=-124.0)
    factory = MockFactory()
    options = CheckOptions(site.etc / "agent.toml", site.profile, site.lender.uri, modem_port=site.modem.path,
                           pin_factory=factory, ask=lambda text: None, tamper_wait=0.5, timeout=15)
    run, (config, identity) = asyncio.run(run_checks(options))
    table = {r.name: (r.passed, r.detail) for r in run.results}
    assert not run.passed
    assert table["signal"] == (False, "RSRP -124 dBm (at least -115): move the antenna or fit an external one")
    assert table["tamper switch"][0] is False and "no change within" in table["tamper switch"][1]
    assert table["round trip"][0] is True
    report_and_send(options, run, config, identity)
    [(_, report)] = installation_reports(site.lender.data, "gw-0001")
    assert not report.passed  # a failed pre-flight is on record too


def test_check_from_the_command_line_prints_the_table_and_json(site, capsys, monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    site.lender.start()
    assert site.provision() == 0
    capsys.readouterr()
    code = pledgewatch_main(["provision", "check", "--config", str(site.etc / "agent.toml"), "--modem",
                             site.modem.path, "--no-tamper", "--profile", str(site.profile.path), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["ok"] and result["passed"]
    assert [c["name"] for c in result["checks"]][-1] == "round trip"
    assert result["report"].startswith("report stored as gw-0001/")


def test_check_with_the_agent_running_says_to_stop_it_first(site, capsys):
    from .conftest import AgentProcess
    site.lender.start()
    assert site.provision() == 0
    agent = AgentProcess(site.etc / "agent.toml")
    try:
        time.sleep(1.5)
        capsys.readouterr()
        code = pledgewatch_main(["provision", "check", "--config", str(site.etc / "agent.toml"), "--no-tamper",
                                 "--profile", str(site.profile.path)])
    finally:
        agent.stop()
    assert code == 1
    assert "stop the agent first" in capsys.readouterr().err
