"""The lender under its fuzzer in every test run: 10^5 generated hostile inputs, no crash, honest devices served.

tests.kit.fuzz says what is generated and what counts as a crash. The seed
changes every day (so each day's run tries inputs no earlier run tried) and
is printed with the count at the end of the run; PLEDGEWATCH_FUZZ_SEED and
PLEDGEWATCH_FUZZ_INPUTS replay or widen a run (`make fuzz` runs 10^7).
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path

from tests.kit.fuzz import REPORTS, LenderFuzz, fuzz_directory

INPUTS = int(os.environ.get("PLEDGEWATCH_FUZZ_INPUTS", "100000"))
SEED = int(os.environ.get("PLEDGEWATCH_FUZZ_SEED", datetime.date.today().strftime("%Y%m%d")))


def test_a_hundred_thousand_hostile_inputs_crash_nothing_and_honest_devices_are_served_between_them():
    with fuzz_directory() as directory:
        report = LenderFuzz(Path(directory), seed=SEED).run(INPUTS)
    REPORTS.append((SEED, report))  # printed at the end of the run (tests/conftest.py)
    assert report.inputs >= INPUTS and report.liveness_checks >= INPUTS // 1000
    assert set(report.by_entry) == {"decoders", "gate", "datagram", "blockwise", "oscore", "udp"}
    assert not report.crashes, (f"{len(report.crashes)} crash(es) with seed {SEED} (replay: PLEDGEWATCH_FUZZ_SEED={SEED} "
                                "pytest tests/lender/test_fuzz.py):\n"
                                + "\n".join(f"{c.entry}: {c.what}\n  input {c.input}" for c in report.crashes[:10]))
