"""The node firmware's own test suite passes under the real MicroPython unix port, inside a device-sized heap."""
from __future__ import annotations

import re


def test_the_firmware_suite_passes_under_micropython_in_a_device_sized_heap(run_micropython):
    result = run_micropython("firmware/tests/run.py")
    output = result.stdout + result.stderr
    summary = re.search(r"^(\d+) passed, (\d+) failed$", result.stdout, re.MULTILINE)
    assert result.returncode == 0 and summary, f"firmware suite failed under MicroPython:\n{output}"
    assert int(summary.group(1)) >= 30 and summary.group(2) == "0", output


def test_the_port_under_test_is_micropython_1_29(run_micropython):
    result = run_micropython("-c", "import sys; print(sys.implementation.name, sys.implementation.version[:2])")
    assert result.stdout.strip() == "micropython (1, 29)", result.stdout + result.stderr


def test_the_runner_reports_a_failing_firmware_test_and_exits_non_zero(run_micropython, firmware_root, tmp_path):
    # The runner itself must be able to fail: run it over a suite with one broken test.
    (tmp_path / "test_broken.py").write_text("def test_fine():\n    pass\n\ndef test_broken():\n    assert 1 == 2, 'deliberately broken'\n")
    runner = (firmware_root / "tests" / "run.py").read_text()
    (tmp_path / "run.py").write_text(runner)
    result = run_micropython(str(tmp_path / "run.py"))
    assert result.returncode != 0
    assert "FAIL test_broken.test_broken" in result.stdout and "deliberately broken" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == "1 passed, 1 failed"
