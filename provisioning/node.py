"""`provision node`: flash an NB-IoT node over USB, make its key on the node, write its config, enroll it.

Run on the technician's laptop with the node on a USB cable. Over the
node's MicroPython raw REPL (provisioning.rawrepl):

1. the firmware (``firmware/src``, optionally compiled with mpy-cross) is
   staged on the node and every file verified by a SHA-256 read back
   (provisioning.flash); unchanged files are not sent again;
2. the node's key: kept if the node has one (``node.key``), else made *on the
   node* from its hardware random number generator (``os.urandom`` through
   the firmware's ``ed25519.generate``) into ``node.key.new``; only the public
   key comes back over the cable;
3. the enrollment request is signed *on the node* (the laptop sends the
   bytes to sign, the node returns the signature), countersigned with the
   technician's key and sent to the lender. It asks for an OSCORE context,
   sealed to a one-time X25519 key this laptop makes: MicroPython has no
   X25519, so the laptop opens the sealed context and writes the node's side
   over the cable, as it handles the node's other files (docs/decisions.md);
4. only then is anything installed: the staged firmware renamed into place,
   ``node.key.new`` renamed to ``node.key``, ``node.oscore`` (the node's side
   of the context, `node_context_file`) written and read back, ``node.json``
   written (docs/firmware.md has its format) with the enrollment's
   ``binding`` (``telemetry.enrollment.binding_of``: this lender's key, the
   node's key, the asset), which the node puts into every envelope. If the
   lender refuses, the staging folder and a key made in this run are
   removed: the node is as it was. If the lender cannot be reached, the node
   is installed without a context (its envelopes wait in its outbox) and the
   request is saved for ``pledgewatch provision submit``, with the one-time
   key beside it (``*.response.key``, 0600) to open the answer;
5. last, once the node has its context, ``node.locked`` is written and the
   node reset: its boot.py (firmware/src/lib/lock.py) then never returns to
   a REPL, so nothing reads ``node.key`` over USB again. A node still waiting
   for its enrollment stays unlocked, to be run again after ``provision
   submit``; ``--leave-unlocked`` is for bench boards only. A locked node is
   recognised (`NodeLockedError`): it is provisioned again only after an
   erase, as a new node with a new key.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import nacl.public

from provisioning.console import Console
from durable.exc import KeyFileError
from durable.keyfile import read_key
from provisioning.enrollment import accept, read_request, send
from provisioning.exc import DeviceCodeError, EnrollmentFileError, LenderUnreachableError, SetupError
from provisioning.flash import STAGING, BoardFiles, Firmware, Flasher
from provisioning.gateway import site_from
from provisioning.install import write_file
from provisioning.rawrepl import RawRepl
from provisioning.serialport import open_port
from provisioning.technician import TechnicianProfile, technician_from
from telemetry.enrollment import (
    AssetBinding,
    ContextKeys,
    EnrollmentBody,
    EnrollmentRequest,
    binding_of,
    check_id,
)
from telemetry.exc import EnrollmentFormatError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIRMWARE = ROOT / "firmware" / "src"
NODE_CONFIG = "node.json"
NODE_KEY = "node.key"
NEW_KEY = "node.key.new"
NODE_CONTEXT = "node.oscore"
NODE_LOCK = "node.locked"  # firmware/src/lib/lock.py's MARKER
CONTEXT_HEADER_BYTES = 512  # the firmware keeps its sequence record behind it (firmware/src/lib/oscore.py)


def node_context_file(keys: ContextKeys) -> bytes:
    """``node.oscore`` as a fresh node holds it: the header around the context map (docs/firmware.md), no record yet.

    Magic "PWO1", the map's length (u16), `ContextKeys.encode()`, the first 4 bytes of its SHA-256, zeros to 512.
    """
    body = b"PWO1" + struct.pack(">H", len(keys.encode())) + keys.encode()
    header = body + hashlib.sha256(body).digest()[:4]
    if len(header) > CONTEXT_HEADER_BYTES:
        raise SetupError(f"an OSCORE context of {len(header)} bytes does not fit node.oscore's header")
    return header + bytes(CONTEXT_HEADER_BYTES - len(header))

# Runs on the node. Keeps the key object in _pw_key for signing; prints only "<how> <public key hex>".
_KEY_CODE = """
import sys, os, binascii
sys.path[:0] = ['{staging}/lib', 'lib']
try:
    import ed25519
finally:
    del sys.path[:2]
def _pw_read(path):
    try:
        f = open(path, 'rb')
    except OSError:
        return None
    try:
        return f.read(64)
    finally:
        f.close()
_pw_seed = None if {rotate} else _pw_read('{key}')
_pw_how = 'kept'
if _pw_seed is None:
    _pw_seed = _pw_read('{new}')
    _pw_how = 'resumed'
if _pw_seed is None:
    _pw_seed, _pw_key = ed25519.generate()
    _pw_f = open('{new}', 'wb')
    _pw_f.write(_pw_seed)
    _pw_f.close()
    _pw_how = 'created'
if len(_pw_seed) != 32:
    raise ValueError('node key holds %d bytes, not 32' % len(_pw_seed))
_pw_key = ed25519.SigningKey(_pw_seed)
del _pw_seed
print(_pw_how, binascii.hexlify(_pw_key.public_key).decode())
"""

_IDENTITY_CODE = """
import sys, binascii
try:
    import machine
    _pw_uid = binascii.hexlify(machine.unique_id()).decode()
except Exception:
    _pw_uid = ''
print(sys.implementation._machine if hasattr(sys.implementation, '_machine') else sys.platform)
print(_pw_uid)
"""


@dataclass(frozen=True, slots=True)
class NodePlan:
    """Everything `provision node` was asked to do, checked before the port is opened."""

    port: str
    device: str
    binding: AssetBinding
    lender: str
    lender_key: bytes
    technician: TechnicianProfile
    settings: dict = field(default_factory=dict)  # node.json beyond device and lender
    firmware: Firmware | None = None
    rotate: bool = False
    baudrate: int = 115200
    pace: float = 0.01
    save_request: Path | None = None
    timeout: float = 20.0
    lock: bool = True  # lock the node's USB REPL once it is enrolled (False: --leave-unlocked, bench boards)

    def __post_init__(self) -> None:
        try:
            check_id(self.device)
        except EnrollmentFormatError as exc:
            raise SetupError(str(exc)) from exc
        if not isinstance(self.settings.get("modem"), dict) or not self.settings["modem"].get("model"):
            raise SetupError("which modem does the node have? pass --modem-model (bc66, bc95, sim7080g) or "
                             "give modem.model in --node-config")

    def node_config(self, binding: bytes | None = None) -> dict:
        """node.json: the settings, the lender and its pinned key, the device id and the enrollment binding (when given)."""
        parts = urlsplit(self.lender)
        config = json.loads(json.dumps(self.settings))  # a deep copy
        lender = config.setdefault("lender", {})
        lender["host"] = parts.hostname
        lender["port"] = parts.port or 5683
        config["device"] = self.device
        # The lender key the technician pinned (the one that signed the site file and the enrollment answer): the node
        # applies only commands it signed (firmware commands module, issue 15). Never one from --node-config.
        config["lender_key"] = self.lender_key.hex()
        config.pop("binding", None)  # only this enrollment's binding, never one given in --node-config
        if binding is not None:
            config["binding"] = binding.hex()
        return config


@dataclass
class NodeResult:
    device: str
    public_key: str
    key: str                # "created", "kept", "resumed"
    enrollment: str         # "enrolled", "pending"
    files_sent: int
    files_unchanged: int
    pending_request: str | None = None
    locked: bool = False
    notes: list[str] = field(default_factory=list)
    binding: bytes | None = field(default=None, repr=False)  # the enrollment's, once the lender answered

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "binding"}


def _sign_on_node(repl: RawRepl, message: bytes) -> bytes:
    text = repl.eval_text(f"print(binascii.hexlify(_pw_key.sign(binascii.unhexlify('{message.hex()}'))).decode())",
                          timeout=120)
    try:
        signature = bytes.fromhex(text)
    except ValueError:
        signature = b""
    if len(signature) != 64:
        raise DeviceCodeError(f"{repl.name}: the node did not return a signature (it printed {text[:60]!r})")
    return signature


def provision_node(plan: NodePlan, console: Console) -> NodeResult:
    firmware = plan.firmware or Firmware.from_source(DEFAULT_FIRMWARE)
    port = open_port(plan.port, baudrate=plan.baudrate)
    try:
        repl = RawRepl(port, chunk_pause=plan.pace)
        console.step(f"talking to the node on {plan.port}")
        repl.enter()
        files = BoardFiles(repl)
        flasher = Flasher(files)
        key_made = False
        try:
            plan_files = flasher.plan(firmware)
            console.step(f"flashing {len(plan_files.send)} file(s), {len(plan_files.unchanged)} already in place")
            flasher.stage(plan_files, progress=console.progress)
            how, public_hex = repl.eval_text(_KEY_CODE.format(
                staging=STAGING, rotate=plan.rotate, key=NODE_KEY, new=NEW_KEY), timeout=120).split()
            key_made = how == "created"
            console.step(f"node key {how} on the node: {public_hex}")
            board, unique_id = (repl.eval_text(_IDENTITY_CODE).splitlines() + ["", ""])[:2]
            hardware = {"board": board.strip()[:128]}
            if unique_id.strip():
                hardware["unique_id"] = unique_id.strip()
            if "modem" in plan.settings:
                hardware["modem_model"] = str(plan.settings["modem"].get("model"))
            result = NodeResult(plan.device, public_hex, how, "", len(plan_files.send), len(plan_files.unchanged))
            # The binding depends only on the lender's key, the node's key and the asset, so a node whose
            # enrollment is still pending gets it now too (`provision submit` never touches the node).
            binding = binding_of(plan.lender_key, bytes.fromhex(public_hex), plan.binding.asset)
            has_context = files.exists(NODE_CONTEXT)
            earlier = None if has_context else _answered(plan, bytes.fromhex(public_hex))
            if earlier is not None:  # an enrollment made offline, submitted since: install what the lender sent
                answer, context = earlier
                console.step(f"{plan.device} was enrolled from its saved request: installing the lender's answer")
                binding = binding_of(plan.lender_key, bytes.fromhex(public_hex), answer.asset)
                result.enrollment = "enrolled"
            else:
                context = _enroll(plan, repl, public_hex, hardware, has_context, result, console)
                binding = result.binding or binding
            key_made = False  # the lender has (or will have) this key: keep it, so a re-run resumes with it
            console.step("installing on the node")
            flasher.commit(firmware, plan_files)
            if how != "kept":
                files.rename(NEW_KEY, NODE_KEY)
            if context is not None:
                console.step(f"writing the node's OSCORE context (sender id {context.sender_id.hex()})")
                _install(files, NODE_CONTEXT, node_context_file(context))
            _install(files, NODE_CONFIG, json.dumps(plan.node_config(binding), indent=1, sort_keys=True).encode())
            if plan.lock and files.exists(NODE_CONTEXT):
                console.step("locking the node's USB REPL (the last step: from its next start on, no REPL)")
                _install(files, NODE_LOCK, b"locked by pledgewatch provision node\n")
                result.locked = True
            elif plan.lock:
                result.notes.append("the node stays unlocked until its enrollment is installed: run provision node "
                                    "again after provision submit, and it locks")
        except BaseException:
            _undo(files, flasher, key_made)
            raise
        repl.exit()
        port.write(b"\x04")  # soft reset in the friendly REPL: the node boots its new firmware
        return result
    finally:
        port.close()


def _pending_files(plan: NodePlan) -> tuple[Path, Path, Path]:
    """(the saved request, the lender's answer `provision submit` writes beside it, the one-time key beside it)."""
    saved = plan.save_request or Path(f"{plan.device}.request.cbor")
    stem = saved.name.removesuffix(".cbor")
    return saved, saved.with_name(stem + ".response.cbor"), saved.with_name(stem + ".response.key")


def _answered(plan: NodePlan, public_key: bytes):
    """(answer, the node's context) of this node's request made offline and submitted since, or None."""
    saved, response, key_file = _pending_files(plan)
    if not (saved.exists() and response.exists() and key_file.exists()):
        return None
    request = read_request(saved)
    if request.body.public_key != public_key:
        return None  # another node's request, or this node's key rotated since
    try:
        response_private = nacl.public.PrivateKey(read_key(key_file))
    except KeyFileError as exc:
        raise EnrollmentFileError(f"{key_file}: {exc}") from exc
    return accept(response.read_bytes(), request, plan.lender_key, response_private)


def _enroll(plan: NodePlan, repl: RawRepl, public_hex: str, hardware: dict, has_context: bool, result: NodeResult,
            console: Console):
    """Sign a request on the node, countersign it and send it; the node's OSCORE context from the answer, or None.

    The laptop opens the context for the node (MicroPython has no X25519). A node that has one keeps it (its
    sequence record lives in it): re-provisioning asks for none, and the lender answers the same key without one.
    Offline, the request is saved with the one-time key beside it (0600) for `provision submit`.
    """
    response_key = None if has_context else nacl.public.PrivateKey.generate()
    body = EnrollmentBody(plan.device, "node", bytes.fromhex(public_hex), plan.technician.technician,
                          hardware, plan.binding, int(time.time()), os.urandom(16),
                          None if response_key is None else bytes(response_key.public_key))
    request = EnrollmentRequest.create(body, lambda message: _sign_on_node(repl, message))
    request = request.countersign(plan.technician.identity())
    try:
        console.step(f"enrolling {plan.device} with the lender at {plan.lender}")
        response = asyncio.run(send(plan.lender, request, timeout=plan.timeout))
    except LenderUnreachableError as exc:
        saved, _, key_file = _pending_files(plan)
        write_file(saved, request.encode(), 0o600)
        result.enrollment = "pending"
        result.pending_request = str(saved)
        result.notes.append(f"{exc}: the request is saved in {saved}; when there is a network: "
                            f"pledgewatch provision submit {saved}")
        if response_key is not None:
            write_file(key_file, bytes(response_key), 0o600)
            result.notes.append(f"the one-time key that opens the lender's answer is in {key_file}; until the node "
                                f"has its OSCORE context ({NODE_CONTEXT}) its envelopes wait in its outbox: once "
                                "submitted, run this command again with the node on the cable")
        return None
    answer, context = accept(response, request, plan.lender_key, response_key)
    result.binding = binding_of(plan.lender_key, bytes.fromhex(public_hex), answer.asset)
    result.enrollment = "enrolled"
    return context


def _install(files: BoardFiles, name: str, data: bytes) -> None:
    """Write `name` on the node beside itself, read it back, then rename it into place."""
    files.write(name + ".new", data)
    if files.sha256(name + ".new") != hashlib.sha256(data).hexdigest():
        raise DeviceCodeError(f"{name} did not read back from the node as written; re-run")
    files.rename(name + ".new", name)


def _undo(files: BoardFiles, flasher: Flasher, key_made: bool) -> None:
    """Leave the node as it was: no staging folder, no key made in this run (best effort: the port may be gone)."""
    try:
        flasher.discard()
        files.remove(NODE_CONFIG + ".new")
        files.remove(NODE_CONTEXT + ".new")
        if key_made:
            files.remove(NEW_KEY)
    except Exception:
        pass


def run_cli(args: argparse.Namespace, console: Console) -> int:
    profile, lender, lender_key = technician_from(args, required=True)
    site = site_from(args, lender, lender_key, profile)
    settings: dict = {}
    if args.node_config is not None:
        try:
            settings = json.loads(args.node_config.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise SetupError(f"--node-config {args.node_config} cannot be read as JSON: {exc}") from exc
        if not isinstance(settings, dict):
            raise SetupError(f"--node-config {args.node_config} must hold a JSON object (node.json's settings)")
    if args.modem_model:
        settings.setdefault("modem", {})["model"] = args.modem_model
    firmware = Firmware.from_source(args.firmware or DEFAULT_FIRMWARE, compile_mpy=args.compile, march=args.march)
    plan = NodePlan(args.port, args.device_id, site.binding, lender, lender_key, profile, settings, firmware,
                    args.rotate, args.baud, args.pace, args.save_request, args.timeout, not args.leave_unlocked)
    result = provision_node(plan, console)
    lines = [f"node {result.device}: key {result.public_key[:16]}... ({result.key} on the node), {result.enrollment}",
             f"firmware: {result.files_sent} file(s) sent, {result.files_unchanged} unchanged, all verified",
             "USB REPL: locked (to provision again: erase, new identity)" if result.locked else "USB REPL: unlocked"]
    lines += [f"note: {note}" for note in result.notes]
    console.result(result.to_json(), lines)
    return 0
