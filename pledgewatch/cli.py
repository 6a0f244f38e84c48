"""The `pledgewatch` console command: one sub-command per kind of user.

Each sub-command lives in its own package and exposes `configure(parser)`,
which adds its arguments and sets `parser.set_defaults(run=callable)`; the
callable takes the parsed arguments and returns the process exit code.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# sub-command -> module that configures it
COMMANDS = {
    "agent": "agent.cli",
    "lender": "lender.cli",
    "provision": "provisioning.cli",
    "hil": "hil.cli",
    "demo": "pledgewatch.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pledgewatch", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.configure(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
