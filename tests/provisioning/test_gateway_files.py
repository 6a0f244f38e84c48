"""What `provision gateway` writes: owners, modes, the site's assets and rules for the agent, the technician's view."""
from __future__ import annotations

import io
import os
import pwd
import stat

import pytest

from agent import config as agent_config
from durable.keyfile import read_key
from pledgewatch.cli import main as pledgewatch_main
from provisioning.console import Console


def provision_without_modem(site, *extra: str) -> int:
    return pledgewatch_main(["provision", "gateway", "--device-id", "gw-0001", "--no-modem",
                             "--asset-file", str(site.site_file), "--config-dir", str(site.etc),
                             "--state-dir", str(site.var), "--profile", str(site.profile.path), "--timeout", "3",
                             *extra])


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_keys_and_state_belong_to_the_agents_user_and_the_config_to_root_and_its_group(site):
    site.lender.start()
    assert provision_without_modem(site, "--user", "nobody") == 0
    nobody = pwd.getpwnam("nobody")
    info = {p.relative_to(site.etc).as_posix(): p.lstat() for p in site.etc.rglob("*")}
    info["."] = site.etc.lstat()
    for name in ("device.key", "oscore", "oscore/secret.json", "oscore/settings.json"):
        assert info[name].st_uid == nobody.pw_uid, name
        assert stat.S_IMODE(info[name].st_mode) in (0o600, 0o700), name
    for name in (".", "agent.toml", "binding.json", "provisioning.json"):
        assert (info[name].st_uid, info[name].st_gid) == (0, nobody.pw_gid), name
        assert not stat.S_IMODE(info[name].st_mode) & 0o007, name  # nothing for others
    var = site.var.lstat()
    assert (var.st_uid, stat.S_IMODE(var.st_mode)) == (nobody.pw_uid, 0o700)


def test_the_site_files_assets_and_rules_reach_the_agents_config(site):
    site.site_file.write_text(site.site_file.read_text() + (
        '\n[rules]\ntimezone = "Africa/Nairobi"\n\n'
        '[[assets]]\nname = "cold-store"\nkind = "stock"\nsensors = ["temp", "tamper"]\ntamper = ["tamper"]\n'
        'temperature = { low = 2.0, high = 8.0, hold_s = 600, hysteresis = 0.5 }\n'
        'geofence = { lat = -1.3192, lon = 36.8581, radius_m = 150 }\n'))
    site.lender.start()
    assert provision_without_modem(site, "--user", "root") == 0
    config = agent_config.load(site.etc / "agent.toml")
    [asset] = config.assets
    assert asset.name == "cold-store" and config.rules.timezone == "Africa/Nairobi"


def test_a_site_file_may_not_set_the_uplinks_security(site, capsys):
    site.site_file.write_text(site.site_file.read_text().replace("[uplink]\n", "[uplink]\ninsecure = true\n"))
    assert provision_without_modem(site, "--user", "root") == 1
    assert "may tune the uplink (batch_interval, ...) but not set lender, security_context or insecure" in \
        capsys.readouterr().err
    assert not site.etc.exists()


def test_the_key_file_is_refused_by_the_agent_if_someone_loosens_its_mode(site):
    site.lender.start()
    assert provision_without_modem(site, "--user", "root") == 0
    os.chmod(site.etc / "device.key", 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        read_key(site.etc / "device.key")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_draw_on_a_terminal_and_stay_out_of_json_and_pipes():
    terminal = Terminal()
    console = Console(stream=terminal)
    for done in (0, 512, 1024):
        console.progress(done, 1024, "lib/ed25519_table.py")
    drawn = terminal.getvalue()
    assert "[##############################] 100% lib/ed25519_table.py" in drawn and drawn.endswith("\n")
    piped = io.StringIO()
    Console(stream=piped).progress(512, 1024, "x")
    quiet = Terminal()
    Console(json_mode=True, stream=quiet, out=io.StringIO()).progress(512, 1024, "x")
    assert piped.getvalue() == "" and quiet.getvalue() == ""


def test_a_failure_is_one_line_even_when_the_cause_spans_lines():
    err, out = io.StringIO(), io.StringIO()
    Console(json_mode=True, stream=err, out=out).failure("node", "first line\n  second line")
    assert err.getvalue() == "pledgewatch provision node: first line second line\n"
    assert out.getvalue() == '{"ok": false, "error": "first line second line"}\n'


def test_the_asset_binding_can_come_from_the_lender_signed_with_its_enrollment_key(site, capsys):
    sites = site.lender.data / "enroll" / "sites"
    sites.mkdir(parents=True, exist_ok=True)
    (sites / "asset-7781.toml").write_text(site.site_file.read_text() + "\n# " + "padding " * 200 + "\n")  # > 1 block
    site.lender.start()
    code = pledgewatch_main(["provision", "gateway", "--device-id", "gw-0001", "--no-modem", "--asset", "asset-7781",
                             "--config-dir", str(site.etc), "--state-dir", str(site.var), "--user", "root",
                             "--profile", str(site.profile.path)])
    assert code == 0, capsys.readouterr().err
    import json
    assert json.loads((site.etc / "binding.json").read_text())["site"] == "Warehouse 3, Mombasa Road"
    assert [s.name for s in agent_config.load(site.etc / "agent.toml").sensors] == ["temp", "tamper"]
    capsys.readouterr()
    code = pledgewatch_main(["provision", "gateway", "--device-id", "gw-0002", "--no-modem", "--asset", "asset-0000",
                             "--config-dir", str(site.root / "etc2"), "--state-dir", str(site.root / "var2"),
                             "--user", "root", "--profile", str(site.profile.path)])
    assert code == 1
    assert "the lender has no asset binding for asset-0000 (4.04" in capsys.readouterr().err
    assert not (site.root / "etc2").exists()
