"""A technician provisions a gateway: simulated modem on a pty, a real lender process over CoAP on loopback."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time


from agent import config as agent_config
from durable.keyfile import read_key
from lender.enrollment.technicians import TechnicianRegistry
from lender.evidence import registry
from pledgewatch.cli import main as pledgewatch_main
from telemetry.identity import Identity

from .conftest import AgentProcess, wait_for


def files_under(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else []


def failure_line(err: str) -> str:
    """The one failure line (steps before it are progress, also on stderr)."""
    lines = [line for line in err.splitlines() if line.startswith("pledgewatch provision")]
    assert len(lines) == 1, err
    return lines[0]


def stored_seqs(site, device="gw-0001"):
    with site.store() as store:
        return [e.seq for e in store.envelopes(device)], store.missing_ranges(device)


def agent_delivers(site, at_least: int, what: str) -> None:
    """Run the installed agent until the lender holds `at_least` of its envelopes; they must be seqs 1..n, none missing."""
    agent = AgentProcess(site.etc / "agent.toml")
    try:
        wait_for(lambda: len(stored_seqs(site)[0]) >= at_least, what=what)
    finally:
        err = agent.stop()
    seqs, missing = stored_seqs(site)
    assert seqs == list(range(1, len(seqs) + 1)) and missing == [], err


def test_gateway_is_enrolled_over_coap_and_the_agents_first_readings_verify_at_the_lender(site, capsys):
    site.lender.start()
    assert site.provision() == 0
    out = capsys.readouterr()
    assert "gw-0001: key" in out.out and "(created), enrolled" in out.out
    assert "IMEI 867698040123450, ICCID 89012601234567890126" in out.out
    # what was written, with its modes
    modes = {name: stat.S_IMODE((site.etc / name).stat().st_mode) for name in files_under(site.etc)}
    assert modes == {"agent.toml": 0o640, "binding.json": 0o640, "device.key": 0o600, "oscore": 0o700,
                     "oscore/secret.json": 0o600, "oscore/settings.json": 0o600, "provisioning.json": 0o640}
    assert stat.S_IMODE(site.var.stat().st_mode) == 0o700
    assert files_under(site.var) == []  # the pending request is gone once enrolled
    config = agent_config.load(site.etc / "agent.toml")
    assert config.uplink.security_context == site.etc / "oscore"
    assert config.device.lender_key == site.profile.lender_key.hex(), "the lender's signed commands are pinned"
    key = Identity(read_key(site.etc / "device.key"))
    with site.store() as store:
        device = store.device("gw-0001")
    assert device.public_key == key.public_key and device.asset == "asset-7781" and device.oscore_id is not None
    enrolled = json.loads((site.lender.data / "enroll" / "requests" / "gw-0001.json").read_text())
    assert enrolled["technician"] == "tech-ana"
    assert enrolled["hardware"]["imei"] == "867698040123450" and enrolled["hardware"]["model"] == "RM520N-GL"
    assert enrolled["binding"]["geofence"] == {"lat": -1.3192, "lon": 36.8581, "radius_m": 150.0}
    # the agent starts with what was written, and the lender verifies what it sends
    agent_delivers(site, 3, "three verified envelopes at the lender")
    with site.store() as store:
        temps = [r for r in store.readings("gw-0001") if r.name == "temp"]
    assert temps and temps[0].value == 4.5


def test_rerunning_gateway_provisioning_keeps_the_identity_and_the_enrollment(site, capsys):
    site.lender.start()
    assert site.provision() == 0
    key = (site.etc / "device.key").read_bytes()
    context = (site.etc / "oscore" / "secret.json").read_bytes()
    capsys.readouterr()
    assert site.provision("--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["identity"] == "kept" and result["enrollment"] == "already enrolled"
    assert (site.etc / "device.key").read_bytes() == key
    assert (site.etc / "oscore" / "secret.json").read_bytes() == context
    with site.store() as store:
        assert [d.device for d in store.devices()] == ["gw-0001"]


def test_a_second_device_id_on_a_provisioned_gateway_needs_rotate(site, capsys):
    site.lender.start()
    assert site.provision() == 0
    capsys.readouterr()
    assert site.provision(device="gw-0002") == 1
    err = failure_line(capsys.readouterr().err)
    assert err.startswith("pledgewatch provision gateway: this gateway is provisioned as gw-0001 already")
    assert "--rotate" in err
    old_key = Identity(read_key(site.etc / "device.key"))
    # the asset is pledged through gw-0001: a second gateway for it is refused until the lender revokes the first
    assert site.provision("--rotate", device="gw-0002") == 1
    assert "asset asset-7781 is pledged already, watched by gateway gw-0001" in capsys.readouterr().err
    with site.store() as store:
        registry.revoke(store, "gw-0001")
    assert site.provision("--rotate", device="gw-0002") == 0
    new_key = Identity(read_key(site.etc / "device.key"))
    assert new_key.kid != old_key.kid
    retired = [p for p in site.etc.iterdir() if p.name.startswith("device.key.retired-")]
    assert len(retired) == 1 and Identity(read_key(retired[0])).kid == old_key.kid
    with site.store() as store:
        assert {d.device for d in store.devices()} == {"gw-0001", "gw-0002"}


def test_the_lender_rejecting_the_technicians_signature_leaves_nothing_half_provisioned(site, capsys):
    registry = TechnicianRegistry(site.lender.data)
    registry.revoke("tech-ana")
    impostor = Identity.generate()
    registry.add("tech-bea", impostor.public_key)
    # the profile claims tech-bea but holds tech-ana's key: the countersignature cannot verify
    site.profile.path.write_text(site.profile.path.read_text().replace('id = "tech-ana"', 'id = "tech-bea"'))
    site.lender.start()
    assert site.provision() == 1
    err = failure_line(capsys.readouterr().err)
    assert err.startswith("pledgewatch provision gateway: the lender refused the enrollment (4.01): the technician "
                          "signature does not verify with the key registered for technician tech-bea")
    assert files_under(site.etc) == [] and files_under(site.var) == []
    assert not site.etc.exists() and not site.var.exists()
    with site.store() as store:
        assert store.devices() == []
    assert not (site.lender.data / "oscore" / "gw-0001").exists()


def test_a_wrong_modem_port_is_one_line_and_writes_nothing(site, capsys):
    site.lender.start()
    code = pledgewatch_main(["provision", "gateway", "--device-id", "gw-0001", "--modem", str(site.root / "ttyUSB7"),
                             "--asset-file", str(site.site_file), "--config-dir", str(site.etc),
                             "--state-dir", str(site.var), "--profile", str(site.profile.path), "--user", "root"])
    assert code == 1
    err = failure_line(capsys.readouterr().err)
    assert err.startswith(f"pledgewatch provision gateway: no serial port {site.root / 'ttyUSB7'}: "
                          "is the device plugged in and powered?")
    assert not site.etc.exists() and not site.var.exists()


def test_a_busy_modem_port_names_the_process_holding_it(site, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import serial, sys, time\n"
                               f"p = serial.Serial({site.modem.path!r}, exclusive=True)\nprint('held', flush=True)\n"
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        site.lender.start()
        assert site.provision() == 1
        err = failure_line(capsys.readouterr().err)
        assert f"serial port {site.modem.path} is busy: held by pid {holder.pid}" in err
        assert not site.etc.exists()
    finally:
        holder.kill()
        holder.wait()


def test_offline_enrollment_spools_from_the_start_and_the_backlog_verifies_after_submit(site, capsys):
    # no lender yet: the site has no signal
    assert site.provision() == 0
    out = capsys.readouterr().out
    assert "pending" in out and "pledgewatch provision submit" in out
    request = site.var / "enrollment" / "request.cbor"
    assert stat.S_IMODE(request.stat().st_mode) == 0o600
    assert stat.S_IMODE((site.var / "enrollment" / "response.key").stat().st_mode) == 0o600
    config = agent_config.load(site.etc / "agent.toml")
    assert config.uplink.security_context == site.etc / "oscore-parked"
    agent = AgentProcess(site.etc / "agent.toml")
    time.sleep(4)  # the agent samples every second and cannot deliver anything
    agent.stop()
    status = json.loads(subprocess.run(
        [sys.executable, "-m", "pledgewatch", "agent", "status", "--config", str(site.etc / "agent.toml"), "--json"],
        capture_output=True, text=True, check=True).stdout)
    spooled = status["spooled"]
    assert spooled >= 3 and status["head_seq"] == spooled  # nothing acked, nothing lost
    # later, with signal: the lender is up, the technician submits the saved request on the gateway
    site.lender.start()
    code = pledgewatch_main(["provision", "submit", str(request), "--config", str(site.etc / "agent.toml"),
                             "--profile", str(site.profile.path), "--user", "root"])
    assert code == 0, capsys.readouterr().err
    assert agent_config.load(site.etc / "agent.toml").uplink.security_context == site.etc / "oscore"
    assert not (site.etc / "oscore-parked").exists() and not request.exists()
    agent_delivers(site, spooled + 2, "the backlog and new readings at the lender")


def test_a_request_made_without_the_technicians_key_is_countersigned_on_the_laptop(site, capsys, tmp_path):
    site.lender.start()
    assert site.provision("--technician", "tech-ana", "--lender", site.lender.uri, "--lender-key",
                          site.profile.lender_key.hex(), "--profile", str(tmp_path / "absent.toml")) == 0
    out = capsys.readouterr().out
    assert "needs countersignature" in out
    with site.store() as store:
        assert store.devices() == []
    # the technician carries the request to the laptop, which has no gateway config
    carried = tmp_path / "laptop" / "gw-0001.request.cbor"
    carried.write_bytes((site.var / "enrollment" / "request.cbor").read_bytes())
    assert pledgewatch_main(["provision", "submit", str(carried), "--config", str(tmp_path / "laptop" / "none.toml"),
                             "--profile", str(site.profile.path)]) == 0
    answer = tmp_path / "laptop" / "gw-0001.request.response.cbor"
    assert f"pledgewatch provision submit {answer.name}" in capsys.readouterr().out
    # sending the same request again is safe: the same answer
    first = answer.read_bytes()
    assert pledgewatch_main(["provision", "submit", str(carried), "--config", str(tmp_path / "laptop" / "none.toml"),
                             "--profile", str(site.profile.path)]) == 0
    assert answer.read_bytes() == first
    # back on the gateway, the answer is installed
    assert pledgewatch_main(["provision", "submit", str(answer), "--config", str(site.etc / "agent.toml"),
                             "--user", "root"]) == 0
    assert (site.etc / "oscore" / "secret.json").exists()
    assert json.loads((site.etc / "provisioning.json").read_text())["enrolled"] is True


def test_install_systemd_writes_a_notify_unit_with_a_watchdog_and_the_udev_rule(site, tmp_path):
    site.lender.start()
    assert site.provision("--install-systemd", "--systemd-dir", str(tmp_path / "systemd"),
                          "--install-udev", "--udev-dir", str(tmp_path / "udev")) == 0
    unit = (tmp_path / "systemd" / "pledgewatch-agent.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    assert f"--config {site.etc / 'agent.toml'}" in unit and "User=root" in unit
    rule = (tmp_path / "udev" / "99-pledgewatch-modem.rules").read_text()
    assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in rule or "ID_MM_DEVICE_IGNORE" in rule
    verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "systemd" / "pledgewatch-agent.service")],
                            capture_output=True, text=True)
    problems = [line for line in verify.stderr.splitlines() if "pledgewatch-agent.service" in line]
    assert problems == [], verify.stderr
    assert stat.S_IMODE(os.stat(tmp_path / "systemd" / "pledgewatch-agent.service").st_mode) == 0o644


def test_rerunning_gateway_after_a_lost_answer_resends_the_same_request_and_gets_the_same_context(site, capsys,
                                                                                                  tmp_path):
    assert site.provision() == 0  # offline: pending
    request = (site.var / "enrollment" / "request.cbor").read_bytes()
    site.lender.start()
    # the request reached the lender from the laptop, but the answer never made it back to the gateway
    carried = tmp_path / "carried.cbor"
    carried.write_bytes(request)
    assert pledgewatch_main(["provision", "submit", str(carried), "--config", str(tmp_path / "none.toml"),
                             "--profile", str(site.profile.path)]) == 0
    capsys.readouterr()
    assert site.provision("--json") == 0  # the technician simply runs the same command again on the gateway
    result = json.loads(capsys.readouterr().out)
    assert result["identity"] == "kept" and result["enrollment"] == "enrolled"
    assert agent_config.load(site.etc / "agent.toml").uplink.security_context == site.etc / "oscore"
    with site.store() as store:
        device = store.device("gw-0001")
    from durable.oscore import read_parameters
    assert read_parameters(site.etc / "oscore").sender_id == device.oscore_id
    assert not (site.etc / "oscore-parked").exists()
