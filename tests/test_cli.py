"""The `pledgewatch` console command: every sub-command is there, and a broken one is an error, not a gap."""
from __future__ import annotations

import pytest

from pledgewatch import cli


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_sub_command_is_offered(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args([command, "--help"])
    assert exited.value.code == 0  # an unknown sub-command exits 2
    assert f"pledgewatch {command}" in capsys.readouterr().out


def test_a_sub_command_that_cannot_be_imported_stops_the_command(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "ghost", "pledgewatch.no_such_module")
    with pytest.raises(ModuleNotFoundError, match="pledgewatch.no_such_module"):
        cli.build_parser()
