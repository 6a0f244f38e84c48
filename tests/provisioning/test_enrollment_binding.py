"""One device, one pledge: provisioning writes the enrollment binding into agent.toml, so every envelope names it.

The binding is 8 bytes of a hash of the pinned lender key, the device key and
the asset (telemetry.enrollment.binding_of). The technician's run writes it
as `[device] binding`, whether the lender answers at once or the request
waits for `provision submit`; the lender holds the same binding for the
device, and refuses envelopes that name another.
"""
from __future__ import annotations

import json

from agent import config as agent_config
from durable.keyfile import read_key
from pledgewatch.cli import main as pledgewatch_main
from telemetry.enrollment import binding_of
from telemetry.identity import Identity


def written_binding(site) -> str | None:
    return agent_config.load(site.etc / "agent.toml").device.binding


def test_an_enrolled_gateway_is_bound_to_the_enrollment_the_lender_holds(site, capsys):
    site.lender.start()
    assert site.provision() == 0
    with site.store() as store:
        held = store.device("gw-0001").binding
    assert held is not None and written_binding(site) == held.hex()
    journal = json.loads((site.etc / "provisioning.json").read_text())
    assert journal["enrollment_binding"] == held.hex()
    # re-running on an enrolled gateway keeps the binding in the rewritten config
    assert site.provision() == 0 and written_binding(site) == held.hex()


def test_a_gateway_enrolled_later_is_bound_from_its_first_reading(site, capsys):
    assert site.provision() == 0  # no signal: the request waits
    assert "pending" in capsys.readouterr().out
    key = Identity(read_key(site.etc / "device.key"))
    expected = binding_of(site.profile.lender_key, key.public_key, "asset-7781").hex()
    assert written_binding(site) == expected  # the agent's backlog is bound before the lender answers
    site.lender.start()
    code = pledgewatch_main(["provision", "submit", str(site.var / "enrollment" / "request.cbor"),
                             "--config", str(site.etc / "agent.toml"), "--profile", str(site.profile.path),
                             "--user", "root"])
    assert code == 0, capsys.readouterr().err
    with site.store() as store:
        assert store.device("gw-0001").binding.hex() == expected == written_binding(site)
    assert (site.etc / "agent.toml").read_text().count("binding =") == 1
