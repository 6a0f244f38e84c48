"""The udev rule for the modem's AT port: its syntax, and what it does to each USB tty of each modem.

Without udevd the rule is checked three ways: a strict parse of the udev(7)
rule grammar; an evaluation of the rule against modelled sysfs device trees
(a tty under usb-serial, usb_interface, usb_device and root hub parents, as
the kernel lays them out); and, where Debian's `udev` is installed and the
test may create a mount namespace, udevadm 252's own rule parser (there is no
`udevadm verify` before systemd 253) run in a sandbox whose /etc/udev/rules.d
holds only this file and whose /dev and /run are private tmpfs, so nothing on
the host changes.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivers.hotplug import KNOWN_MODEMS

RULES = Path(__file__).resolve().parents[2] / "drivers" / "udev" / "99-pledgewatch-modem.rules"

# udev(7): which operators each key takes ("match" ==/!=, "assign" =/+=/-=/:=).
MATCH, ASSIGN = {"==", "!="}, {"=", "+=", "-=", ":="}
KEYS = {
    "ACTION": MATCH, "DEVPATH": MATCH, "KERNEL": MATCH, "KERNELS": MATCH, "SUBSYSTEM": MATCH,
    "SUBSYSTEMS": MATCH, "DRIVER": MATCH, "DRIVERS": MATCH, "ATTRS": MATCH, "TAGS": MATCH,
    "TEST": MATCH, "PROGRAM": MATCH, "RESULT": MATCH, "CONST": MATCH,
    "NAME": MATCH | ASSIGN, "SYMLINK": MATCH | ASSIGN, "ATTR": MATCH | ASSIGN, "ENV": MATCH | ASSIGN,
    "TAG": MATCH | ASSIGN, "SYSCTL": MATCH | ASSIGN,
    "OWNER": ASSIGN, "GROUP": ASSIGN, "MODE": ASSIGN, "SECLABEL": ASSIGN, "RUN": ASSIGN,
    "IMPORT": ASSIGN, "OPTIONS": ASSIGN, "LABEL": {"="}, "GOTO": {"="},
}
TAKES_ARGUMENT = {"ATTR", "ATTRS", "ENV", "TEST", "SYSCTL", "CONST", "SECLABEL", "RUN", "IMPORT"}
_PAIR = re.compile(r'\s*([A-Z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(,)?')


@dataclass(frozen=True)
class Pair:
    key: str
    argument: str | None
    op: str
    value: str


def parse_rules(text: str) -> list[tuple[int, list[Pair]]]:
    """(line number, key-value pairs) for each rule; raises ValueError with the line on any breach of udev(7)."""
    rules, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pairs, position = [], 0
        while position < len(line):
            match = _PAIR.match(line, position)
            if match is None:
                raise ValueError(f"line {start}: cannot parse {line[position:]!r}")
            key, argument, op, value, comma = match.groups()
            if key not in KEYS:
                raise ValueError(f"line {start}: unknown key {key}")
            if op not in KEYS[key]:
                raise ValueError(f"line {start}: {key} does not take {op}")
            if (argument is not None) != (key in TAKES_ARGUMENT) and key not in {"RUN", "IMPORT", "SECLABEL"}:
                raise ValueError(f"line {start}: {key} {'needs' if argument is None else 'takes no'} {{argument}}")
            pairs.append(Pair(key, argument, op, value))
            position = match.end()
            if not comma and line[position:].strip():
                raise ValueError(f"line {start}: missing comma before {line[position:]!r}")
        rules.append((start, pairs))
    return rules


# --- a tiny udev: enough of udev(7) to run these rules against modelled devices ---


@dataclass
class SysfsNode:
    subsystem: str
    devtype: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class UdevResult:
    symlinks: list[str]
    env: dict[str, str]


def _glob(value: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(value, alternative) for alternative in pattern.split("|"))


def run_rules(rules, action: str, chain: list[SysfsNode]) -> UdevResult:
    """Apply `rules` to the device chain[0] whose parents are chain[1:]."""
    device, env, symlinks = chain[0], {}, []
    labels = {pairs[0].value: index for index, (_, pairs) in enumerate(rules) if pairs[0].key == "LABEL"}
    index = 0
    while index < len(rules):
        _, pairs = rules[index]
        index += 1
        parent_keys = [p for p in pairs if p.key in ("SUBSYSTEMS", "ATTRS")]
        matched_parent = device
        if parent_keys:  # all parent keys must hold on one and the same node of the chain
            for node in chain:
                if all(
                    _glob(node.subsystem, p.value) if p.key == "SUBSYSTEMS" else _glob(node.attributes.get(p.argument, ""), p.value) and p.argument in node.attributes
                    for p in parent_keys
                ):
                    matched_parent = node
                    break
            else:
                continue
        ok = True
        for p in pairs:
            if p.op not in MATCH or p.key in ("SUBSYSTEMS", "ATTRS"):
                continue
            actual = {"ACTION": action, "SUBSYSTEM": device.subsystem}.get(p.key)
            if p.key == "ENV":
                actual = env.get(p.argument, "")
            assert actual is not None, f"the test's udev does not know {p.key}"
            hit = _glob(actual, p.value) if p.value else actual == ""
            ok &= hit if p.op == "==" else not hit
        if not ok:
            continue
        for p in pairs:
            if p.op in MATCH:
                continue
            value = re.sub(
                r"\$attr\{([^}]*)\}",
                lambda m: device.attributes.get(m.group(1), matched_parent.attributes.get(m.group(1), "")),
                p.value,
            )
            if p.key == "ENV":
                env[p.argument] = value
            elif p.key == "SYMLINK":
                symlinks.append(value)
            elif p.key == "GOTO":
                index = labels[value]
    # Names starting with "." are rule-private: udev does not export them with the device.
    return UdevResult(symlinks, {name: value for name, value in env.items() if not name.startswith(".")})


def usb_tty(vendor: str, product: str, interface: int) -> list[SysfsNode]:
    """ttyUSBn as the kernel links it: tty → usb-serial port → usb_interface → usb_device → root hub."""
    return [
        SysfsNode("tty"),
        SysfsNode("usb-serial", attributes={"port_number": "0"}),
        SysfsNode("usb", "usb_interface", {"bInterfaceNumber": f"{interface:02x}", "bInterfaceClass": "ff"}),
        SysfsNode("usb", "usb_device", {"idVendor": vendor, "idProduct": product, "manufacturer": "Quectel"}),
        SysfsNode("usb", "usb_device", {"idVendor": "1d6b", "idProduct": "0002"}),
    ]


@pytest.fixture(scope="module")
def rules():
    return parse_rules(RULES.read_text())


@pytest.mark.parametrize("profile", KNOWN_MODEMS, ids=lambda p: p.model)
def test_each_known_modems_at_port_gets_the_stable_name_and_modemmanager_leaves_it(rules, profile):
    for interface in range(6):
        result = run_rules(rules, "add", usb_tty(profile.vendor_id, profile.product_id, interface))
        if interface == profile.at_interface:
            assert result.symlinks == ["pledgewatch-modem-at"]
            assert result.env["ID_MM_DEVICE_IGNORE"] == "1" and result.env["ID_MM_PORT_IGNORE"] == "1"
        else:
            assert result.symlinks == [], f"{profile.model} interface {interface} must keep its own name"
            assert "ID_MM_DEVICE_IGNORE" not in result.env, "ModemManager may use the other ports"


def test_a_change_event_keeps_the_name(rules):
    result = run_rules(rules, "change", usb_tty("2c7c", "0801", 2))
    assert result.symlinks == ["pledgewatch-modem-at"]


@pytest.mark.parametrize(
    ("action", "chain"),
    [
        ("remove", usb_tty("2c7c", "0801", 2)),
        ("add", usb_tty("1199", "9071", 2)),  # another vendor's modem
        ("add", usb_tty("2c7c", "0802", 2)),  # an unknown Quectel product
        ("add", [SysfsNode("tty"), SysfsNode("pnp")]),  # an on-board UART
        ("add", [SysfsNode("net")] + usb_tty("2c7c", "0801", 2)[1:]),  # the modem's network interface
    ],
    ids=["remove", "other-vendor", "other-product", "onboard-uart", "not-a-tty"],
)
def test_no_other_device_is_touched(rules, action, chain):
    assert run_rules(rules, action, chain) == UdevResult([], {})


def test_the_rule_and_the_hotplug_table_name_the_same_ports(rules):
    in_rules = set()
    for _, pairs in rules:
        values = {(p.key, p.argument): p.value for p in pairs}
        if ("ATTRS", "idVendor") in values:
            in_rules.add(
                (values["ATTRS", "idVendor"], values["ATTRS", "idProduct"], int(values["ENV", ".PLEDGEWATCH_USB_IF"], 16))
            )
    assert in_rules == {(p.vendor_id, p.product_id, p.at_interface) for p in KNOWN_MODEMS}


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        ('SUBSYSTEM="tty", GOTO="x"', "does not take ="),
        ('SYMLNK+="x"', "unknown key"),
        ('SUBSYSTEM=="tty" GOTO="x"', "missing comma"),
        ('ENV="1"', "needs"),
        ("KERNEL==ttyUSB*", "cannot parse"),
    ],
)
def test_the_grammar_check_catches_broken_rules(broken, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_rules(broken)


# --- udevadm's own parser, sandboxed ---------------------------------------------------

SANDBOX = textwrap.dedent(
    """\
    set -e
    mount -t tmpfs tmpfs /run
    mkdir -p /run/pw/rules /run/pw/empty
    cp "$1" /run/pw/rules/
    mount --bind /run/pw/rules /etc/udev/rules.d
    mount --bind /run/pw/empty /usr/lib/udev/rules.d
    mount -t tmpfs tmpfs /dev
    udevadm test --action=add /sys/devices/virtual/tty/ptmx 2>&1
    """
)


def udevadm_diagnostics(rules_file: Path) -> list[str]:
    """What udevadm's rule parser says about `rules_file`, run where it can change nothing on the host."""
    if shutil.which("udevadm") is None:
        pytest.skip("udevadm is not installed (Debian package 'udev'); the grammar and evaluation tests still ran")
    if os.geteuid() != 0 or shutil.which("unshare") is None or not Path("/etc/udev/rules.d").is_dir():
        pytest.skip("the udevadm check needs root and unshare(1) to sandbox /dev, /run and the rules directories")
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "Reading rules file" not in done.stdout:
        pytest.skip(f"this container cannot sandbox udevadm: {done.stdout[-300:]} {done.stderr[-300:]}")
    assert f"Reading rules file: /etc/udev/rules.d/{rules_file.name}" in done.stdout
    return re.findall(rf"^.*{re.escape(rules_file.name)}:\d+.*$", done.stdout, re.MULTILINE)


def test_udevadm_finds_nothing_wrong_with_the_rules_file():
    assert udevadm_diagnostics(RULES) == []


def test_udevadm_check_would_catch_a_broken_rules_file(tmp_path):
    broken = tmp_path / RULES.name
    broken.write_text(RULES.read_text().replace('SUBSYSTEM!="tty"', 'SUBSYSTEM="tty"').replace("SYMLINK+=", "SYMLNK+="))
    complaints = udevadm_diagnostics(broken)
    assert any("Invalid operator for SUBSYSTEM" in line for line in complaints)
    assert any("Invalid key 'SYMLNK'" in line for line in complaints)
