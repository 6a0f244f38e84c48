"""Hardware-in-the-loop rig: run the scenario suite against a bench, or check a bench's environment file.

    pledgewatch hil run --env hil/envs/sim.toml --report reports/hil [--long] [-k EXPR] [SCENARIO ...]
    pledgewatch hil env hil/envs/rpi4-rm520n.example.toml [--json]

`run` wraps pytest (with the rig's plugin): it runs the scenarios in
hil/scenarios (or the files given) against the bench the environment file
describes, writes the JUnit XML, the human report (index.html, summary.md)
and its timeline plots into the report directory, and exits non-zero if any
scenario failed. `env` validates an environment file and lists what the bench
offers, and why it lacks the rest.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from hil.env import CAPABILITIES, REPO, load
from hil.exc import EnvFileError

SCENARIOS = REPO / "hil" / "scenarios"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the rig's sub-commands to `parser` (called by pledgewatch.cli)."""
    parser.description = __doc__.split("\n\n")[0]
    sub = parser.add_subparsers(dest="hil_command", required=True, metavar="SUBCOMMAND")

    run = sub.add_parser("run", help="run the scenarios against a bench and write the report",
                         description="Run the HIL scenarios against a bench; exits non-zero if any scenario fails.")
    run.add_argument("--env", required=True, type=Path, metavar="FILE", help="the bench's environment file")
    run.add_argument("--report", required=True, type=Path, metavar="DIR",
                     help="where to write junit.xml, index.html, summary.md, results.json and the timeline SVGs")
    run.add_argument("--long", action="store_true", help="the long scenario versions (make hil), not the short ones")
    run.add_argument("-k", dest="keyword", metavar="EXPR", help="only scenarios matching this pytest -k expression")
    run.add_argument("--agent-command", metavar="ARGV",
                     help="start the agent with this command instead of the bench's ({python}, {config} substituted)")
    run.add_argument("scenarios", nargs="*", type=Path, metavar="SCENARIO",
                     help=f"scenario files or folders (default {SCENARIOS.relative_to(REPO)})")
    run.set_defaults(run=cmd_run)

    env = sub.add_parser("env", help="check an environment file and list the capabilities of its bench")
    env.add_argument("file", type=Path, metavar="FILE")
    env.add_argument("--json", action="store_true", help="machine-readable output")
    env.set_defaults(run=cmd_env)


def pytest_command(args: argparse.Namespace) -> list[str]:
    """The pytest invocation `hil run` makes (paths absolute: pytest runs from the repository root)."""
    paths = [str(p.resolve()) for p in args.scenarios] or [str(SCENARIOS)]
    command = [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO),
               *paths, "--hil-env", str(args.env.resolve()),
               "--hil-report", str(args.report.resolve()), "--hil-profile", "long" if args.long else "short",
               "-p", "no:cacheprovider", "-v", "-ra"]
    if args.keyword:
        command += ["-k", args.keyword]
    if args.agent_command:
        command += ["--hil-agent-command", args.agent_command]
    return command


def cmd_run(args: argparse.Namespace) -> int:
    try:
        load(args.env)  # fail here, with the file's own error, rather than inside pytest
    except EnvFileError as exc:
        print(f"pledgewatch hil run: {exc}", file=sys.stderr)
        return 2
    for path in args.scenarios:
        if not path.exists():
            print(f"pledgewatch hil run: no scenario file or folder {path}", file=sys.stderr)
            return 2
    result = subprocess.run(pytest_command(args), cwd=REPO)
    index = args.report / "index.html"
    if index.exists():
        print(f"report: {index} (JUnit XML: {args.report / 'junit.xml'})")
    return result.returncode


def cmd_env(args: argparse.Namespace) -> int:
    try:
        env = load(args.file)
    except EnvFileError as exc:
        print(f"pledgewatch hil env: {exc}", file=sys.stderr)
        return 2
    offered = env.capabilities()
    if args.json:
        print(json.dumps({"name": env.name, "description": env.description,
                          "capabilities": {name: {"offered": why is None, "missing": why}
                                           for name, why in offered.items()}}, indent=1))
        return 0
    print(f"bench {env.name}: {env.description}")
    for name, why in offered.items():
        print(f"  {'yes' if why is None else 'no ':>3}  {name:<16} {CAPABILITIES[name] if why is None else why}")
    return 0
