"""Shared test setup: hypothesis profiles (CI runs the full example counts)."""
from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")


def pytest_terminal_summary(terminalreporter):
    """The lender fuzzer's count, in every run's output (tests/lender/test_fuzz.py)."""
    import sys
    fuzz = sys.modules.get("tests.kit.fuzz")
    for seed, report in getattr(fuzz, "REPORTS", ()):
        terminalreporter.write_line(f"{report.line()} (seed {seed})")
