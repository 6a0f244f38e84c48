"""`provision submit FILE`: an enrollment that waited for the lender, finished from wherever there is a network.

Two kinds of file:

* a request (``STATE/enrollment/request.cbor``, saved by ``provision gateway``
  or ``provision node`` when the lender could not be reached): countersigned
  with the technician's key if it is not yet (and written back, so sending it
  again is the same request), sent to the lender, and the signed answer
  checked against the pinned lender key. On the gateway that made it, the
  answer is installed at once; anywhere else it is written beside the
  request as ``*.response.cbor`` to carry to the gateway (a node's: for
  ``provision node`` to install from the same folder, with the one-time key
  it saved beside the request);
* a response: installed on this gateway (it must answer this gateway's
  pending request), which switches the agent from its parked context to the
  lender's, and restarts the agent under systemd.

Sending is always safe to repeat: the lender answers the same request with
the same response.
"""
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from provisioning.console import Console
from provisioning.enrollment import (
    PendingEnrollment,
    accept,
    kind_of_file,
    read_request,
    send,
)
from provisioning.exc import EnrollmentFileError, LenderUnreachableError
from provisioning.install import Owner, write_file
from provisioning.technician import technician_from


def _gateway_dirs(config_file: Path) -> tuple[Path, Path] | None:
    """(config dir, state dir) of the gateway whose agent.toml is `config_file`, if this machine is one."""
    if not config_file.exists():
        return None
    from agent import config as agent_config
    from agent.exc import ConfigError
    try:
        config = agent_config.load(config_file)
    except ConfigError as exc:
        raise EnrollmentFileError(f"cannot use this gateway's config: {exc}") from exc
    return config.path.parent, config.device.state_dir


def run(args: argparse.Namespace, console: Console) -> int:
    from provisioning.gateway import complete_enrollment, restart_agent

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise EnrollmentFileError(f"cannot read {args.file}: {exc.strerror}") from exc
    kind = kind_of_file(data)
    dirs = _gateway_dirs(args.config)
    if kind == "response":
        if dirs is None:
            raise EnrollmentFileError(f"{args.file} is a lender's answer: install it on the gateway that asked "
                                      f"(no gateway config at {args.config}; pass --config)")
        asset = complete_enrollment(dirs[0], dirs[1], data, Owner.of(args.user))
        note = restart_agent()
        console.result({"installed": True, "asset": asset, "note": note},
                       [f"enrolled: OSCORE context installed in {dirs[0] / 'oscore'} (asset {asset})", note])
        return 0
    request = read_request(args.file)
    profile, lender, lender_key = technician_from(args, required=not request.countersigned)
    if not request.countersigned:
        request = request.countersign(profile.identity())
        write_file(args.file, request.encode(), args.file.stat().st_mode & 0o777)
        console.step(f"countersigned as technician {profile.technician}")
    console.step(f"sending the enrollment of {request.body.device} to {lender}")
    try:
        response = asyncio.run(send(lender, request, timeout=args.timeout))
    except LenderUnreachableError as exc:
        raise LenderUnreachableError(f"{exc}; the request stays in {args.file}: submit it again when there is "
                                     "a network") from exc
    local = None
    if dirs is not None:
        pending = PendingEnrollment(dirs[1] / "enrollment")
        if pending.exists() and pending.load()[0].digest == request.digest:
            local = dirs
    answer, _ = accept(response, request, lender_key, None, open_sealed=False)
    if local is not None:
        complete_enrollment(local[0], local[1], response, Owner.of(args.user))
        note = restart_agent()
        console.result({"device": answer.device, "enrolled": True, "installed": True, "note": note},
                       [f"{answer.device} enrolled for asset {answer.asset}; context installed", note])
        return 0
    if request.body.response_key is None:
        console.result({"device": answer.device, "enrolled": True, "installed": False},
                       [f"{answer.device} enrolled for asset {answer.asset}"])
        return 0
    out = args.file.with_name(args.file.name.removesuffix(".cbor") + ".response.cbor")
    write_file(out, response, 0o600)
    if request.body.kind == "node":  # the laptop that made the request holds its one-time key (provisioning.node)
        then = (f"with the node on the cable, run `pledgewatch provision node` for {answer.device} again from this "
                f"folder: it writes the node's OSCORE context from {out.name}")
    else:
        then = f"copy {out} to the gateway and run there: pledgewatch provision submit {out.name}"
    console.result(
        {"device": answer.device, "enrolled": True, "installed": False, "response": str(out)},
        [f"{answer.device} enrolled for asset {answer.asset}", then],
    )
    return 0
