"""Provision devices in the field: identity, asset binding, enrollment, node flashing, pre-flight checks.

`pledgewatch provision SUBCOMMAND`, for the field technician:

    technician init   make the technician's key (0600) and profile; prints the public key for the lender
    gateway           on a gateway: identity, modem identity, asset binding, enrollment, config (+ systemd, udev)
    node              flash an NB-IoT node over USB (MicroPython raw REPL), make its key on the node, enroll it
    submit FILE       send a saved enrollment request (countersigning it), or install the lender's answer
    check             pre-flight on a gateway: modem, signal, time, sensors, round trip, tamper; signed report

Every failure is one line on stderr that says what to do; exit code 1 when
something failed or was refused, 2 for bad usage. ``--json`` prints one JSON
object on stdout for scripts. Re-running any step is safe: an existing
identity is kept unless ``--rotate``.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from durable.exc import DurableError
from provisioning.console import Console
from provisioning.exc import ProvisioningError, SetupError
from provisioning.technician import (
    DEFAULT_PROFILE,
    init_profile,
    parse_key,
    technician_from,
)
from telemetry.exc import TelemetryError


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the technician's sub-commands to `parser` (called by pledgewatch.cli)."""
    parser.description = __doc__.split("\n\n")[0]
    sub = parser.add_subparsers(dest="provision_command", required=True, metavar="SUBCOMMAND")

    def command(name: str, run, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="one JSON object on stdout (for scripts)")
        p.set_defaults(run=_guarded(run, name))
        return p

    def profile_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--profile", type=Path, default=None, metavar="FILE",
                       help=f"the technician's profile (default {DEFAULT_PROFILE})")
        p.add_argument("--lender", metavar="URI", help="the lender, coap://HOST:PORT (default: from the profile)")
        p.add_argument("--lender-key", metavar="HEX", help="the lender's enrollment key (default: from the profile)")

    tech = sub.add_parser("technician", help="the technician's key and profile",
                          description="the technician's key and profile")
    tech_sub = tech.add_subparsers(dest="technician_command", required=True, metavar="ACTION")
    p = tech_sub.add_parser("init", help="make your key (0600) and profile, or update the profile")
    p.add_argument("--id", required=True, dest="technician", help="your technician id, as the lender registers it")
    p.add_argument("--profile", type=Path, default=DEFAULT_PROFILE, metavar="FILE")
    p.add_argument("--lender", metavar="URI", help="the lender, coap://HOST:PORT")
    p.add_argument("--lender-key", metavar="HEX", help="the lender's enrollment key (from `lender technicians add`)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_guarded(_technician_init, "technician init"))

    p = command("gateway", _gateway, "provision this gateway: identity, modem, asset binding, enrollment, config")
    p.add_argument("--device-id", required=True, help="the gateway's device id (1..64 of A-Z a-z 0-9 . _ -)")
    p.add_argument("--modem", metavar="PORT", help="the modem's AT port (e.g. /dev/pledgewatch-modem-at)")
    p.add_argument("--no-modem", action="store_true", help="a gateway without a cellular modem (LAN uplink)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--asset-file", type=Path, metavar="FILE",
                       help="the site file: [asset] id, site, geofence, and optional [[sensors]] (TOML or JSON)")
    where.add_argument("--asset", metavar="ID", help="take the site file for this asset id from the lender (signed)")
    p.add_argument("--config-dir", type=Path, default=Path("/etc/pledgewatch"))
    p.add_argument("--state-dir", type=Path, default=Path("/var/lib/pledgewatch"))
    p.add_argument("--user", help="the user the agent runs as (default: pledgewatch if it exists, else you)")
    p.add_argument("--technician", metavar="ID",
                   help="your technician id, when your key is not on this gateway (then `submit` countersigns later)")
    p.add_argument("--rotate", action="store_true", help="give the gateway a new key (the old one is kept, retired)")
    p.add_argument("--key-store", choices=("software", "tpm"), default="software",
                   help="where the device key lives: a seed file (software, the default) or a P-256 key made inside "
                        "the TPM 2.0 (tpm: /dev/tpmrm0, else /dev/tpm0, else --tcti)")
    p.add_argument("--tcti", metavar="STRING",
                   help="the TPM's TCTI when it is not /dev/tpmrm0 or /dev/tpm0 (e.g. swtpm:host=127.0.0.1,port=2321)")
    p.add_argument("--install-systemd", action="store_true", help="install and enable pledgewatch-agent.service")
    p.add_argument("--systemd-dir", type=Path, default=Path("/etc/systemd/system"))
    p.add_argument("--install-udev", action="store_true", help="install the modem's udev rule")
    p.add_argument("--udev-dir", type=Path, default=Path("/etc/udev/rules.d"))
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the lender (default 20)")
    profile_options(p)

    p = command("submit", _submit, "send a saved enrollment request, or install the lender's answer on the gateway")
    p.add_argument("file", type=Path, metavar="FILE", help="a request (request.cbor) or a response (*.response.cbor)")
    p.add_argument("--config", type=Path, default=Path("/etc/pledgewatch/agent.toml"),
                   help="on the gateway: its agent.toml (to install the answer)")
    p.add_argument("--user", help="the user the agent runs as (owner of the installed context)")
    p.add_argument("--timeout", type=float, default=20.0)
    profile_options(p)

    p = command("node", _node, "flash an NB-IoT node over USB, make its key on the node, write its config, enroll it")
    p.add_argument("--port", required=True, help="the node's USB serial port (e.g. /dev/ttyACM0)")
    p.add_argument("--device-id", required=True, help="the node's device id")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--asset-file", type=Path, metavar="FILE", help="the site file ([asset] ...)")
    where.add_argument("--asset", metavar="ID", help="take the site file for this asset id from the lender (signed)")
    p.add_argument("--node-config", type=Path, metavar="FILE",
                   help="node.json settings (modem model, pins, interval...; docs/firmware.md); "
                        "device and lender are filled in")
    p.add_argument("--modem-model", help="the node's modem (bc66, bc95, sim7080g) when --node-config does not say")
    p.add_argument("--firmware", type=Path, default=None, metavar="DIR", help="firmware folder (default firmware/src)")
    p.add_argument("--compile", action="store_true", help="compile the firmware with mpy-cross first")
    p.add_argument("--march", help="mpy-cross architecture (xtensawin for ESP32, armv6m for RP2040)")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--pace", type=float, default=0.01, metavar="SECONDS",
                   help="pause after each 256 bytes sent (default 0.01, as pyboard.py; 0 for a fast USB-CDC board)")
    p.add_argument("--rotate", action="store_true", help="give the node a new key")
    p.add_argument("--leave-unlocked", action="store_true",
                   help="do not lock the node's USB REPL (bench boards only: its key stays readable over USB)")
    p.add_argument("--save-request", type=Path, metavar="FILE",
                   help="where to keep the request when the lender cannot be reached (default ./DEVICE.request.cbor)")
    p.add_argument("--timeout", type=float, default=20.0)
    profile_options(p)

    p = command("check", _check, "pre-flight on this gateway: modem, signal, time, sensors, round trip, tamper")
    p.add_argument("--config", type=Path, default=Path("/etc/pledgewatch/agent.toml"))
    p.add_argument("--modem", metavar="PORT", help="the modem's AT port (omit on a gateway without one)")
    p.add_argument("--min-rsrp", type=float, default=-115.0, help="lowest acceptable RSRP in dBm (default -115)")
    p.add_argument("--min-rssi", type=float, default=-100.0,
                   help="lowest acceptable RSSI in dBm when the modem gives no RSRP (default -100)")
    p.add_argument("--max-clock-skew", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--tamper", default="tamper", metavar="SENSOR", help="the tamper contact's sensor name")
    p.add_argument("--tamper-wait", type=float, default=60.0, help="seconds to wait for the door to open")
    p.add_argument("--no-tamper", action="store_true", help="skip the tamper test (no tamper switch fitted)")
    p.add_argument("--timeout", type=float, default=20.0)
    profile_options(p)


def _guarded(run, name: str):
    def guarded(args: argparse.Namespace) -> int:
        console = Console(json_mode=getattr(args, "json", False))
        try:
            return run(args, console)
        except (ProvisioningError, TelemetryError, DurableError) as exc:
            console.failure(name, str(exc))
            return 1
        except KeyboardInterrupt:
            console.failure(name, "interrupted; nothing half-done was kept: re-run to start again")
            return 130
    return guarded


def _technician_init(args: argparse.Namespace, console: Console) -> int:
    lender_key = parse_key(args.lender_key) if args.lender_key else None
    profile, created = init_profile(args.profile, args.technician, lender=args.lender, lender_key=lender_key)
    public = profile.identity().public_key.hex()
    console.result(
        {"technician": profile.technician, "profile": str(profile.path), "key_file": str(profile.key_file),
         "public_key_hex": public, "key_created": created},
        [f"technician {profile.technician}: profile {profile.path}, key {profile.key_file} "
         f"({'created' if created else 'kept'}, mode 0600)",
         f"give the lender your public key: pledgewatch lender technicians add --id {profile.technician} "
         f"--public-key {public}"],
    )
    return 0


def _gateway(args: argparse.Namespace, console: Console) -> int:
    from provisioning import gateway
    from provisioning.install import Owner

    if not args.modem and not args.no_modem:
        raise SetupError("name the modem's AT port with --modem PORT (or --no-modem for a gateway without one)")
    profile, lender, lender_key = technician_from(args, required=args.technician is None)
    site = gateway.site_from(args, lender, lender_key, profile if args.technician is None else None)
    plan = gateway.GatewayPlan(
        device=args.device_id, binding=site.binding, lender=lender, lender_key=lender_key, config_dir=args.config_dir,
        state_dir=args.state_dir, modem_port=None if args.no_modem else args.modem, sensors=site.sensors,
        uplink=site.uplink, assets=site.assets, rules=site.rules,
        technician=profile if args.technician is None else None, technician_id=args.technician,
        owner=Owner.of(args.user), rotate=args.rotate, install_systemd=args.install_systemd,
        systemd_dir=args.systemd_dir, install_udev=args.install_udev, udev_dir=args.udev_dir, timeout=args.timeout,
        key_store=args.key_store, tcti=args.tcti,
    )
    result = asyncio.run(gateway.provision_gateway(plan, console.step))
    in_tpm = f", {result.algorithm} in the TPM" if result.key_store == "tpm" else ""
    lines = [f"gateway {result.device}: key {result.kid} ({result.identity}{in_tpm}), {result.enrollment}",
             f"config: {result.config}"]
    if result.modem:
        lines.append(f"modem: {result.modem['manufacturer']} {result.modem['model']}, IMEI {result.modem['imei']}, "
                     f"ICCID {result.modem['iccid']}")
    lines += [f"installed: {path}" for path in result.installed]
    lines += [f"note: {note}" for note in result.notes]
    console.result(result.to_json(), lines)
    return 0


def _submit(args: argparse.Namespace, console: Console) -> int:
    from provisioning import submit
    return submit.run(args, console)


def _node(args: argparse.Namespace, console: Console) -> int:
    from provisioning import node
    return node.run_cli(args, console)


def _check(args: argparse.Namespace, console: Console) -> int:
    from provisioning import check
    return check.run_cli(args, console)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pledgewatch provision")
    configure(parser)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
