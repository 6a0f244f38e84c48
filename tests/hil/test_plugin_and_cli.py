"""The pytest plugin and `pledgewatch hil`: capabilities skip tests with a message naming what is missing,
`hil run` writes JUnit XML and the human report and exits non-zero when a scenario fails, `hil env` explains a bench."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BENCH = """
[bench]
name = "tiny"
description = "a bench with a gateway and nothing else"
[gateway]
device = "gw-tiny"
[network]
kind = "direct"
"""

SCENARIOS = '''
"""Scenarios of a tiny bench (for the rig's own tests)."""
import pytest


@pytest.mark.needs("power_relay", "network_faults")
def test_cycles_the_modem(hil_env):
    raise AssertionError("must have been skipped")


@pytest.mark.needs("agent")
def test_passes(hil_env):
    assert hil_env.name == "tiny"


def test_fails(hil_env):
    assert 1 + 1 == 3, "the bench disagrees"
'''


def pledgewatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pledgewatch", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.toml").write_text(BENCH)
    (tmp_path / "test_tiny.py").write_text(SCENARIOS)
    return tmp_path


def test_hil_run_writes_the_reports_and_fails_when_a_scenario_fails(tiny):
    run = pledgewatch("hil", "run", "--env", str(tiny / "tiny.toml"), "--report", str(tiny / "report"),
                      str(tiny / "test_tiny.py"))
    assert run.returncode == 1, run.stdout + run.stderr
    suite = ET.parse(tiny / "report" / "junit.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    skipped = cases["test_cycles_the_modem"].find("skipped").get("message")
    assert skipped == ("bench tiny lacks: power_relay (the bench declares no [power_relay]); "
                       "network_faults ([network] kind is 'direct')")
    assert "the bench disagrees" in cases["test_fails"].find("failure").get("message")
    assert cases["test_passes"].find("failure") is None and cases["test_passes"].find("skipped") is None
    page = (tiny / "report" / "index.html").read_text()
    assert "Scenarios of a tiny bench" in page and "1 passed" in page and "1 failed" in page
    assert "bench tiny lacks: power_relay" in page
    summary = (tiny / "report" / "summary.md").read_text()
    assert "| failed |" in summary and "the bench disagrees" in summary
    assert json.loads((tiny / "report" / "results.json").read_text())["failed"] is True
    assert f"report: {tiny / 'report' / 'index.html'}" in run.stdout


def test_hil_run_exits_zero_when_every_scenario_passes_or_is_skipped(tiny):
    run = pledgewatch("hil", "run", "--env", str(tiny / "tiny.toml"), "--report", str(tiny / "report"),
                      "-k", "not fails", str(tiny / "test_tiny.py"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 1 skipped" in run.stdout


def test_without_a_bench_the_scenarios_skip_and_say_how_to_give_one(tiny):
    run = subprocess.run([sys.executable, "-m", "pytest", str(tiny / "test_tiny.py"), "-p", "no:cacheprovider",
                          "-rs", "--rootdir", str(tiny)], capture_output=True, text=True, timeout=120, cwd=tiny)
    assert run.returncode == 0, run.stdout
    assert "run with --hil-env FILE" in run.stdout and "3 skipped" in run.stdout
    assert not (tiny / "reports").exists()  # no bench, no report


def test_a_broken_environment_file_stops_hil_run_before_pytest(tiny):
    (tiny / "broken.toml").write_text(BENCH.replace('device = "gw-tiny"', 'device = "gw tiny"'))
    run = pledgewatch("hil", "run", "--env", str(tiny / "broken.toml"), "--report", str(tiny / "report"))
    assert run.returncode == 2 and "[gateway]" in run.stderr and "device" in run.stderr
    assert not (tiny / "report").exists()


def test_an_unknown_capability_in_a_needs_mark_is_an_error(tiny):
    (tiny / "test_typo.py").write_text('import pytest\n\n@pytest.mark.needs("power_realy")\ndef test_x(hil_env):\n'
                                       '    pass\n')
    run = pledgewatch("hil", "run", "--env", str(tiny / "tiny.toml"), "--report", str(tiny / "report"),
                      str(tiny / "test_typo.py"))
    assert run.returncode != 0 and "unknown capability ['power_realy']" in run.stdout


def test_hil_env_explains_what_a_bench_offers_and_lacks():
    run = pledgewatch("hil", "env", "hil/envs/rpi4-rm520n.example.toml", "--json")
    assert run.returncode == 0, run.stderr
    offered = json.loads(run.stdout)["capabilities"]
    assert offered["agent"] == {"offered": True, "missing": None}
    assert offered["clock_jump"]["offered"] is False and "[clock]" in offered["clock_jump"]["missing"]
    text = pledgewatch("hil", "env", "hil/envs/sim.toml")
    assert text.returncode == 0 and "yes  power_relay" in text.stdout


def test_long_scenarios_get_hours_instead_of_the_projects_ten_minute_timeout(tiny):
    (tiny / "test_long.py").write_text(
        "def test_x(hil_env, hil_profile, request):\n"
        "    assert hil_profile.name == 'long'\n"
        "    assert request.node.get_closest_marker('timeout').args == (3 * 3600,)\n")
    run = pledgewatch("hil", "run", "--env", str(tiny / "tiny.toml"), "--report", str(tiny / "report"), "--long",
                      str(tiny / "test_long.py"))
    assert run.returncode == 0, run.stdout[-3000:]
