"""hil.plugin — the pytest plugin of the HIL rig (registered as the `pledgewatch-hil` pytest11 entry point).

    pytest hil/scenarios --hil-env hil/envs/sim.toml [--hil-profile long] [--hil-report DIR]

Options: ``--hil-env FILE`` names the bench (`hil.env`); ``--hil-profile``
picks short (the `make test` run) or long scenario versions;
``--hil-report DIR`` is where the run's report goes (default
``reports/hil-<bench name>`` under the rootdir, written whenever a scenario
ran against a bench); ``--hil-agent-command ARGV`` starts another agent
build than the bench's (the rig's own tests run a deliberately defective one).

Tests declare what the bench must offer with ``@pytest.mark.needs("modem_faults",
"power_relay")`` and are skipped on a bench that lacks it, with a message
naming each missing capability and why it is missing. Fixtures:

* ``hil_env`` — the `Environment` (skips when no ``--hil-env`` was given);
* ``hil_profile`` — the `Profile`;
* ``bench`` — a started `hil.bench.Bench` for this test, closed afterwards; a
  test that needs ``disk_full`` gets its spool on a size-limited disk, one
  that needs ``modem`` gets the modem (and the agent's health monitor on it),
  one that needs ``nbiot_node`` gets the nodes;
* ``make_bench`` — the same, built with overrides (``make_bench(agent_command=...)``).

The plugin is loaded in every pytest run of the project; without
``--hil-env`` it only registers the marker and stays out of the way.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

_RUN = pytest.StashKey["object"]()
_RESULT = pytest.StashKey["object"]()
_PHASES = pytest.StashKey["dict"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "pledgewatch hardware-in-the-loop rig")
    group.addoption("--hil-env", metavar="FILE", default=None,
                    help="the bench's environment file (e.g. hil/envs/sim.toml); HIL scenarios skip without it")
    group.addoption("--hil-profile", choices=("short", "long"), default="short",
                    help="short scenario versions (make test) or long ones (make hil); default short")
    group.addoption("--hil-report", metavar="DIR", default=None,
                    help="where to write the run's report (default reports/hil-<bench name> under the rootdir)")
    group.addoption("--hil-agent-command", metavar="ARGV", default=None,
                    help="start the agent with this command instead of the bench's (shell words; {python} and "
                         "{config} are substituted): run the scenarios against another agent build")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(*capabilities): the bench must offer these (hil.env.CAPABILITIES); skipped otherwise")
    path = config.getoption("--hil-env", default=None)
    if not path:
        return
    from hil.env import load
    from hil.exc import EnvFileError
    from hil.report import HilRun

    try:
        env = load(path)
    except EnvFileError as exc:
        raise pytest.UsageError(f"--hil-env: {exc}") from exc
    config.stash[_RUN] = (env, HilRun(env_name=env.name, env_path=str(path),
                                      profile=config.getoption("--hil-profile"), started=time.time()))


# The long scenarios run for up to ~30 min each (a compressed day, a day-long outage); the project's
# pytest-timeout default (600 s) is for the short ones.
LONG_SCENARIO_TIMEOUT_S = 3 * 3600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _run_state(config) is None or config.getoption("--hil-profile") != "long":
        return
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if "hil_env" in getattr(item, "fixturenames", ()) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LONG_SCENARIO_TIMEOUT_S))


def _run_state(config: pytest.Config):
    return config.stash.get(_RUN, None)


def _needs(item: pytest.Item) -> list[str]:
    needed: list[str] = []
    for mark in item.iter_markers("needs"):
        needed.extend(mark.args)
    return needed


def pytest_runtest_setup(item: pytest.Item) -> None:
    needed = _needs(item)
    if not needed:
        return
    state = _run_state(item.config)
    if state is None:
        pytest.skip(f"needs a bench offering {', '.join(needed)}: run with --hil-env FILE (e.g. hil/envs/sim.toml)")
    env, _ = state
    missing = env.missing(needed)
    if missing:
        pytest.skip(f"bench {env.name} lacks: " + "; ".join(missing))


@pytest.fixture(scope="session")
def hil_env(request: pytest.FixtureRequest):
    """The bench's `hil.env.Environment` (the test is skipped when no --hil-env was given)."""
    state = _run_state(request.config)
    if state is None:
        pytest.skip("a HIL scenario: run with --hil-env FILE (e.g. hil/envs/sim.toml)")
    return state[0]


@pytest.fixture(scope="session")
def hil_profile(request: pytest.FixtureRequest):
    """The scenario profile (`hil.bench.Profile`): short or long."""
    from hil.bench import Profile
    return Profile(request.config.getoption("--hil-profile"))


@pytest.fixture
def make_bench(request: pytest.FixtureRequest, hil_env, hil_profile, tmp_path: Path):
    """Build and start this test's bench, with overrides: ``make_bench(agent_command=[...])``. Closed afterwards."""
    from hil.bench import Bench

    benches = []

    def build(**overrides):
        if benches:
            raise RuntimeError("one bench per test")
        options = {"name": request.node.name, "profile": hil_profile,
                   "limited_disk": "disk_full" in _needs(request.node),
                   "with_nodes": "nbiot_node" in _needs(request.node),
                   "with_modem": bool({"modem", "modem_faults", "power_relay"} & set(_needs(request.node)))}
        command = request.config.getoption("--hil-agent-command")
        if command:
            options["agent_command"] = shlex.split(command)
        options.update(overrides)
        bench = Bench(hil_env, tmp_path / "bench", **options)
        benches.append(bench)
        request.node.stash[_RESULT] = bench.result
        bench.start()
        return bench

    yield build
    for bench in benches:
        bench.close()


@pytest.fixture
def bench(make_bench):
    """This test's started bench (`hil.bench.Bench`)."""
    return make_bench()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if _run_state(item.config) is not None and "hil_env" in getattr(item, "fixturenames", ()):
        item.stash.setdefault(_PHASES, {})[report.when] = report
        if report.when == "teardown":
            _record(item)
    return report


def _record(item: pytest.Item) -> None:
    from hil.report import ScenarioOutcome

    phases = item.stash[_PHASES]
    _, run = _run_state(item.config)
    outcome, message, details = "passed", "", ""
    duration = sum(r.duration for r in phases.values())
    for when in ("setup", "call", "teardown"):
        report = phases.get(when)
        if report is None:
            continue
        if report.skipped and hasattr(report, "wasxfail"):
            outcome, message = "xfailed", f"known bug, expected to fail: {report.wasxfail.removeprefix('reason: ')}"
            details = report.longreprtext
            break
        if report.skipped:
            outcome = "skipped"
            longrepr = report.longrepr
            message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            message = message.removeprefix("Skipped: ")
            break
        if report.failed:
            outcome = "failed" if when == "call" else "error"
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else str(report.longrepr).splitlines()[-1]
            details = report.longreprtext
            break
    module_doc = getattr(getattr(item, "module", None), "__doc__", None) or ""
    run.outcomes.append(ScenarioOutcome(nodeid=item.nodeid, name=item.name, outcome=outcome, duration_s=duration,
                                        message=message, details=details, result=item.stash.get(_RESULT, None),
                                        title=module_doc.strip().split("\n")[0].rstrip(".")))


def _report_dir(config: pytest.Config, env_name: str) -> Path:
    chosen = config.getoption("--hil-report")
    return Path(chosen) if chosen else config.rootpath / "reports" / f"hil-{env_name}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = _run_state(session.config)
    if state is None or not state[1].outcomes:
        return
    from hil.report import write_report

    env, run = state
    run.ended = time.time()
    index = write_report(run, _report_dir(session.config, env.name))
    session.config.stash[_RUN] = (env, run, index)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = _run_state(config)
    if state is not None and len(state) == 3:
        terminalreporter.write_line(f"HIL report for bench {state[0].name}: {state[2]}")
