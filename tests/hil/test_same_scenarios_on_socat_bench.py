"""The scenario files run unchanged against a bench whose "real" modem is a simulator behind socat on
another pseudo-terminal path: nothing in the scenario knows the modem is simulated."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat (apt-get install socat)")
def test_the_modem_hang_scenario_passes_unchanged_on_the_socat_bench(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "pledgewatch", "hil", "run", "--env", str(ROOT / "hil/envs/socat-modem.toml"),
         "--report", str(tmp_path / "report"), str(ROOT / "hil/scenarios/test_modem_hang.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    (scenario,) = results["scenarios"]
    assert results["env"] == "socat-modem" and scenario["outcome"] == "passed"
    result = scenario["result"]
    assert result["notes"]["ladder at the lender"].endswith("down → relay power cycle → ok")
    # The AT port the scenario used was socat's: socat ran, twice (the modem's power cycle re-enumerates it).
    socat_log = Path(result["logs"]["socat"]).read_text()
    assert socat_log.count("start #") == 2 and "/modem/ttyUSB2" in socat_log
