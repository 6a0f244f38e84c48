"""Environment files: the shipped benches load, a bench's capabilities follow from what it declares,
and every mistake in a file is refused with the file, the table and the key in the message."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.env import CAPABILITIES, Environment, load, parse
from hil.exc import EnvFileError

ROOT = Path(__file__).resolve().parents[2]
ENVS = ROOT / "hil" / "envs"

MINIMAL = """
[bench]
name = "tiny"
[gateway]
device = "gw-1"
"""


def env_of(text: str) -> Environment:
    return parse(text, Path("/benches/test.toml"))


def test_the_simulated_bench_offers_every_gateway_capability():
    env = load(ENVS / "sim.toml")
    offered = env.capabilities()
    assert env.name == "sim" and env.modem.kind == "simulator" and env.network.kind == "proxy"
    for capability in ("agent", "lender", "power_cut", "network_faults", "modem", "modem_faults", "power_relay",
                       "disk_full", "clock_jump"):
        assert offered[capability] is None, (capability, offered[capability])


def test_the_socat_bench_differs_from_the_simulated_one_only_in_its_modem_and_names():
    sim = tomllib.loads((ENVS / "sim.toml").read_text())
    socat = tomllib.loads((ENVS / "socat-modem.toml").read_text())
    assert socat["modem"]["kind"] == "socat" and sim["modem"]["kind"] == "simulator"
    for data in (sim, socat):
        del data["modem"]["kind"], data["bench"], data["gateway"]["device"]
    assert sim == socat
    assert load(ENVS / "socat-modem.toml").capabilities()["modem_faults"] is None


def test_the_raspberry_pi_example_describes_real_hardware_and_says_what_this_machine_lacks():
    env = load(ENVS / "rpi4-rm520n.example.toml")
    assert env.modem.kind == "serial" and env.power_relay.kind == "gpio" and env.power_relay.pin == 26
    offered = env.capabilities()
    assert "no fault knobs" in offered["modem_faults"] or "does not exist" in offered["modem_faults"]
    assert "[clock]" in offered["clock_jump"]
    assert offered["nbiot_node"] == "the bench declares no [[nodes]]"


def test_a_minimal_bench_has_defaults_and_lacks_what_it_does_not_declare():
    env = env_of(MINIMAL)
    assert env.gateway.command[-1] == "{config}" and env.lender.security == "oscore"
    assert env.missing(["agent", "power_relay", "modem"]) == [
        "power_relay (the bench declares no [power_relay])", "modem (the bench declares no [modem])"]


def test_asking_for_an_unknown_capability_is_an_error_listing_the_known_ones():
    with pytest.raises(EnvFileError, match="unknown capability.*power_relay"):
        env_of(MINIMAL).missing(["teleporter"])
    assert set(env_of(MINIMAL).capabilities()) == set(CAPABILITIES)


@pytest.mark.parametrize("extra, words", [
    ("[gateway.sensors]\nprobes = 0\n", ["[gateway.sensors]", "probes"]),
    ("[gateway.sensors]\ninterval_s = 0.5\n", ["interval_s", ">= 1"]),
    ("[modem]\nkind = \"simulator\"\nmodel = \"nokia3310\"\n", ["[modem]", "model", "rm520n"]),
    ("[modem]\nkind = \"serial\"\n", ["[modem]", "port"]),
    ("[modem]\nkind = \"carrier-pigeon\"\n", ["[modem]", "kind", "socat"]),
    ("[power_relay]\nkind = \"gpio\"\n", ["[power_relay]", "pin"]),
    ("[power_relay]\nkind = \"simulated\"\n", ["simulated", "[modem]"]),
    ("[disk]\nsize_bytes = 10\n", ["[disk]", "size_bytes"]),
    ("[lender]\nbind = \"localhost\"\n", ["[lender]", "bind"]),
    ("[network]\nkind = \"netem\"\n", ["[network]", "proxy"]),
    ("[network]\nseed = \"seven\"\n", ["[network]", "seed", "integer"]),
    ("[clock]\nkind = \"ntp\"\n", ["[clock]", "shim"]),
    ("[teleporter]\n", ["unknown table", "teleporter"]),
    ("[[nodes]]\nname = \"-bad\"\n", ["[[nodes]] #1", "name"]),
    ("[[nodes]]\nname = \"n1\"\nmodem_model = \"bc67\"\n", ["[[nodes]] #1", "modem_model", "bc66"]),
    ("[[nodes]]\nname = \"n1\"\n[[nodes]]\nname = \"n1\"\n", ["unique"]),
])
def test_a_mistake_in_an_environment_file_names_the_table_and_key(extra, words):
    with pytest.raises(EnvFileError) as caught:
        env_of(MINIMAL + extra)
    message = str(caught.value)
    assert message.startswith("/benches/test.toml: ")
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("gateway, words", [
    ("device = \"gw 1\"\n", ["device", "A-Z"]),
    ("device = \"gw\"\ncommand = [\"pledgewatch\", \"agent\", \"run\"]\n", ["{config}"]),
    ("device = \"gw\"\ncommand = \"pledgewatch agent run\"\n", ["command", "array"]),
    ("device = \"gw\"\nsynchronous = \"OFF\"\n", ["synchronous", "FULL"]),
    ("device = \"gw\"\nspeed = 3\n", ["unknown key", "speed", "allowed"]),
    ("device = \"gw\"\n[gateway.uplink]\nlender = \"coap://x\"\n", ["[gateway.uplink]", "lender"]),
    ("", ["device"]),
])
def test_a_mistake_in_the_gateway_table_is_refused(gateway, words):
    with pytest.raises(EnvFileError) as caught:
        env_of("[bench]\nname = \"b\"\n[gateway]\n" + gateway)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_a_file_without_a_bench_name_or_gateway_or_valid_toml_is_refused(tmp_path):
    for text, word in (("[gateway]\ndevice = \"g\"\n", "[bench] needs name"), ("[bench]\nname = \"b\"\n", "[gateway]"),
                       ("[bench\n", "not valid TOML")):
        with pytest.raises(EnvFileError, match=word.replace("[", r"\[").replace("]", r"\]")):
            env_of(text)
    with pytest.raises(EnvFileError, match="cannot read"):
        load(tmp_path / "missing.toml")


toml_values = st.recursive(
    st.one_of(st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=12)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
tables = st.sampled_from(["bench", "lender", "network", "gateway", "modem", "power_relay", "disk", "clock", "nodes"])


@given(st.dictionaries(tables, st.dictionaries(st.sampled_from(
    ["name", "kind", "device", "command", "probes", "port", "pin", "model", "seed", "size_bytes", "bind", "sensors",
     "uplink", "off_s", "interval_s", "security"]), toml_values, max_size=4), max_size=6))
def test_any_malformed_environment_is_an_env_file_error_never_a_crash(data):
    try:
        environment = _from_data(data)
    except EnvFileError:
        return
    assert isinstance(environment, Environment)


def _from_data(data: dict) -> Environment:
    """parse() on TOML written from `data` (values TOML cannot hold are skipped by the writer)."""
    lines = []

    def value(v) -> str | None:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').encode("unicode_escape").decode() + '"'
        if isinstance(v, list):
            items = [value(i) for i in v]
            return None if None in items else "[" + ", ".join(items) + "]"
        if isinstance(v, dict):
            items = [(k, value(i)) for k, i in v.items()]
            return None if any(i is None for _, i in items) else "{" + ", ".join(
                f'"{k}" = {i}' for k, i in items if k.isprintable()) + "}"
        return None

    for table, content in data.items():
        lines.append(f"[{table}]")
        for key, v in content.items():
            written = value(v)
            if written is not None:
                lines.append(f'"{key}" = {written}')
    text = "\n".join(lines) + "\n"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        text = MINIMAL  # the writer made something TOML cannot hold; the parser is not what is under test then
    return env_of(text)
