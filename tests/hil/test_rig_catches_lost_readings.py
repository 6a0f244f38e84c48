"""The rig catches a real bug: the outage-and-drain scenario, unchanged, against an agent whose spool deletes
each batch before the lender acks it, fails with a message naming exactly the seqs that were lost."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil.invariant import describe_seqs

ROOT = Path(__file__).resolve().parents[2]
DEFECTIVE_AGENT = Path(__file__).with_name("defective_agent.py")
SCENARIO = ROOT / "hil" / "scenarios" / "test_outage_and_drain.py"


def expand(text: str) -> set[int]:
    seqs = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("..")
        seqs.update(range(int(first), int(last or first) + 1))
    return seqs


@pytest.mark.slow
def test_a_spool_that_deletes_before_the_ack_fails_the_scenario_naming_the_lost_seqs(tmp_path):
    deleted_log = tmp_path / "deleted-early.txt"
    report_dir = tmp_path / "report"
    command = f"{{python}} {DEFECTIVE_AGENT} {deleted_log} {{config}}"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(SCENARIO), "--hil-env", str(ROOT / "hil/envs/sim.toml"),
         "--hil-agent-command", command, "--hil-report", str(report_dir), "-p", "no:cacheprovider", "-q",
         "--basetemp", str(tmp_path / "pytest")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]

    scenario = json.loads((report_dir / "results.json").read_text())["scenarios"][0]
    assert scenario["outcome"] == "failed"
    verdict = scenario["result"]["invariant"]
    lost = expand(verdict["lost"])
    deleted_early = {int(s) for line in deleted_log.read_text().split("\n") for s in line.split()}
    # Every exchange during the outage fails: its batch was deleted and never arrived.
    assert lost, verdict
    assert lost <= deleted_early, f"named as lost but never deleted early: {sorted(lost - deleted_early)}"
    assert verdict["stored"] + len(lost) == verdict["head_seq"], verdict  # every other seq is at the lender

    message = f"lost seqs {describe_seqs(lost)}"
    assert message in scenario["message"], scenario["message"]
    assert message in run.stdout  # pytest's own failure output names them too
    failure = ET.parse(report_dir / "junit.xml").getroot().find("testcase/failure")
    assert failure is not None and message in failure.get("message")
    assert message in (report_dir / "index.html").read_text()
