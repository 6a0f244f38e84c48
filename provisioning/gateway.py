"""`provision gateway`: give a gateway its identity, bind it to the pledged asset, enroll it, write its config.

Run on the gateway itself. In order:

1. read the modem's IMEI, ICCID and model over its AT port (drivers.modem);
2. the device key: kept if the gateway has one (re-running never makes a
   second identity), generated here if not (``os.urandom``; it never leaves
   the gateway), replaced only with ``--rotate`` (the old key is kept beside
   it as ``device.key.retired-<time>``, so evidence it signed still verifies).
   With ``--key-store tpm`` the key is a P-256 key made inside the TPM
   (durable.keystore; the TPM found at /dev/tpmrm0, /dev/tpm0, or ``--tcti``)
   and only its description, ``device.keystore``, is written; the request is
   then a version 2 enrollment request (ES256 device signature);
3. the enrollment request, signed by the device key, countersigned by the
   technician's key when the technician's profile is at hand, with a fresh
   X25519 response key; kept in ``STATE/enrollment/`` (0600) before it is
   sent, so an answer lost on the way can be fetched again with the same
   request;
4. sent to the lender. Enrolled: the OSCORE context goes to
   ``CONFIG/oscore/``. No answer: the request stays pending for
   ``pledgewatch provision submit`` and the agent gets a *parked* context (a
   random one no lender knows), so it runs, signs and spools from now on and
   delivers the backlog once the real context is installed. Refused: every
   file this run made is removed again;
5. ``agent.toml`` (0640, root:agent group), ``binding.json``, the
   provisioning journal, the state directory (0700, agent user), and on
   request the systemd unit and the modem's udev rule.

The enrollment binding (``telemetry.enrollment.binding_of``: 8 bytes of a hash
of the pinned lender key, the device key and the asset) is ``[device]
binding`` in agent.toml, so every envelope names this one pledge at this one
lender. It depends on nothing the lender's answer adds, so it is written at
once, also while the enrollment is pending (the backlog the agent spools
meanwhile is bound too), and written again from the asset the lender's answer
names when an answer is accepted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nacl.public
from aiocoap.numbers import codes

import drivers
from drivers.at import AtChannel, ChannelConfig
from drivers.exc import DriverError
from drivers.modem import open_modem
from durable import oscore
from durable.exc import DurableError
from durable.keyfile import create_key, read_key
from durable.keystore import (
    DEFAULT_TPM_HANDLE,
    KEYSTORE_FILE,
    KeyStoreDescription,
    TpmKey,
    activate_credential,
    attest_tpm_key,
    create_device_key,
    default_tcti,
    evict_tpm_key,
    open_device_key,
)
from provisioning.enrollment import PendingEnrollment, accept, post, send
from provisioning.exc import (
    DeviceEnrollmentError,
    IdentityExistsError,
    LenderUnreachableError,
    ModemReadError,
    SetupError,
)
from provisioning.install import Owner, Rollback, chown_tree, ensure_dir, write_file
from provisioning.serialport import check_port
from provisioning.technician import TechnicianProfile
from telemetry.enrollment import (
    AssetBinding,
    EnrollmentBody,
    EnrollmentRequest,
    SiteRequest,
    TpmAttestation,
    binding_of,
    certify_data,
    check_id,
    open_site,
)
from telemetry.exc import EnrollmentFormatError
from telemetry.identity import Identity, algorithm_name
from telemetry.numbers import PATH_SITES

# shipped as package data (pyproject.toml), so an installed wheel has them too
UNIT_TEMPLATE = Path(__file__).resolve().parent / "deploy" / "pledgewatch-agent.service"
UDEV_RULE = Path(drivers.__file__).resolve().parent / "udev" / "99-pledgewatch-modem.rules"
CONFIG_FILE = "agent.toml"
KEY_FILE = "device.key"
CONTEXT_DIR = "oscore"
PARKED_DIR = "oscore-parked"
JOURNAL_FILE = "provisioning.json"
BINDING_FILE = "binding.json"

Step = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ModemInfo:
    """What the modem says about itself: bound into the enrollment (a SIM swap is then visible)."""

    imei: str
    iccid: str
    manufacturer: str
    model: str
    revision: str | None = None

    def to_json(self) -> dict:
        return {"imei": self.imei, "iccid": self.iccid, "manufacturer": self.manufacturer, "model": self.model,
                "revision": self.revision}

    def hardware(self) -> dict[str, str]:
        data = {"imei": self.imei, "iccid": self.iccid, "manufacturer": self.manufacturer, "model": self.model}
        if self.revision:
            data["revision"] = self.revision
        return data


async def read_modem(port: str, *, timeout: float = 5.0) -> ModemInfo:
    """IMEI, ICCID and model from the modem on `port` (technician-facing errors)."""
    check_port(port)  # a missing, busy or forbidden port: its own one-line message
    channel = AtChannel(ChannelConfig(port, default_timeout_s=timeout))
    try:
        await channel.open()
        modem = await open_modem(channel)
        imei = await modem.imei()
        iccid = await modem.iccid()
    except DriverError as exc:
        raise ModemReadError(f"the modem on {port} did not give its identity ({exc}); check the SIM is inserted "
                             "and the port is the modem's AT port (ls -l /dev/pledgewatch-modem-at)") from exc
    finally:
        await channel.close()
    identity = modem.identity
    return ModemInfo(imei, iccid, identity.manufacturer, identity.model, identity.revision)


@dataclass(frozen=True, slots=True)
class SiteFile:
    """A site file: the asset binding, the sensors to configure, and [uplink] settings for agent.toml."""

    binding: AssetBinding
    sensors: tuple[dict, ...] = ()
    uplink: dict = field(default_factory=dict)
    assets: tuple[dict, ...] = ()   # agent.toml [[assets]]: what the edge rules judge (agent.assets)
    rules: dict = field(default_factory=dict)  # agent.toml [rules]


def load_site(path: str | os.PathLike) -> SiteFile:
    """The asset binding (and sensors, uplink settings) from a site file: TOML or JSON.

        [asset]
        id = "asset-7781"
        site = "Warehouse 3"
        geofence = { lat = -1.3, lon = 36.8, radius_m = 150 }
        [[sensors]]                  # optional: copied into agent.toml
        kind = "contact"
        name = "tamper"
        pin = 17
        [uplink]                     # optional: extra [uplink] settings (batch_interval, ...)
        batch_interval = 30
        [[assets]]                   # optional: copied into agent.toml for the edge rules (agent.assets)
        name = "cold-store"
        kind = "stock"
        sensors = ["temp", "tamper"]
        [rules]                      # optional: copied into agent.toml
        timezone = "Africa/Nairobi"
    """
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise SetupError(f"cannot read the asset file {path}: {exc.strerror}") from exc
    return parse_site(text, str(path), json_format=path.suffix == ".json")


async def fetch_site(lender: str, asset: str, lender_key: bytes, technician: TechnicianProfile, *,
                     timeout: float = 20.0) -> SiteFile:
    """The site file the lender keeps for `asset`, asked for with the technician's key (the lender hands site
    files to registered technicians only), opened with the request's one-time key, checked against the pinned
    lender key."""
    response_key = nacl.public.PrivateKey.generate()
    request = SiteRequest(technician.technician, asset, int(time.time()), bytes(response_key.public_key))
    response = await post(lender, PATH_SITES, request.sign(technician.identity()), timeout=timeout)
    if response.code != codes.CONTENT:
        text = response.payload.decode("utf-8", "replace").strip()[:300]
        raise SetupError(f"the lender has no asset binding for {asset} ({response.code.dotted}: {text!r}) for "
                         f"technician {technician.technician}; use --asset-file")
    try:
        data = open_site(response.payload, response_key, lender_key)
    except EnrollmentFormatError as exc:
        raise SetupError(f"the asset binding for {asset} is not signed by the pinned lender key ({exc})") from exc
    site = parse_site(data.decode("utf-8"), f"the lender's site file for {asset}")
    if site.binding.asset != asset:
        raise SetupError(f"the lender's site file for {asset} binds asset {site.binding.asset}: tell the lender")
    return site


def parse_site(text: str, where: str, *, json_format: bool = False) -> SiteFile:
    path = where
    try:
        if json_format:
            data = json.loads(text)
        else:
            import tomllib
            data = tomllib.loads(text)
    except ValueError as exc:
        raise SetupError(f"asset file {path} is not valid {'JSON' if json_format else 'TOML'}: {exc}") from exc
    asset = data.get("asset")
    if not isinstance(asset, dict):
        raise SetupError(f"asset file {path} needs an [asset] table with id (and site, geofence)")
    try:
        binding = AssetBinding.from_map({("asset" if k == "id" else k): v for k, v in asset.items()},
                                        f"{path}: [asset]")
    except EnrollmentFormatError as exc:
        raise SetupError(str(exc)) from exc
    sensors = data.get("sensors", [])
    if not isinstance(sensors, list) or not all(isinstance(s, dict) for s in sensors):
        raise SetupError(f"asset file {path}: sensors must be an array of tables ([[sensors]])")
    uplink = data.get("uplink", {})
    if not isinstance(uplink, dict) or {"lender", "security_context", "insecure"} & set(uplink):
        raise SetupError(f"asset file {path}: [uplink] may tune the uplink (batch_interval, ...) but not set "
                         "lender, security_context or insecure: provisioning sets those")
    assets = data.get("assets", [])
    rules = data.get("rules", {})
    if not isinstance(assets, list) or not all(isinstance(a, dict) for a in assets) or not isinstance(rules, dict):
        raise SetupError(f"asset file {path}: assets must be an array of tables ([[assets]]), rules a table")
    unknown = sorted(set(data) - {"asset", "sensors", "uplink", "assets", "rules"})
    if unknown:
        raise SetupError(f"asset file {path}: unknown table(s) {', '.join(unknown)}; "
                         "allowed: asset, sensors, uplink, assets, rules")
    return SiteFile(binding, tuple(sensors), dict(uplink), tuple(assets), dict(rules))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is JSON's string syntax
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise SetupError(f"cannot write {value!r} into agent.toml")


def binding_line(binding: str) -> str:
    """The agent.toml line that binds the agent's envelopes to one enrollment (`binding_of` its response, hex)."""
    return f"binding = {_toml_value(binding)}   # the enrollment every envelope names"


def render_config(device: str, state_dir: Path, lender: str, context: str, sensors: Sequence[Mapping],
                  uplink: Mapping | None = None, assets: Sequence[Mapping] = (), rules: Mapping | None = None,
                  binding: str | None = None, key_store: str = "software", lender_key: bytes | None = None) -> str:
    """The agent's config (agent.config's format); paths relative to the config file where they can be."""
    lines = [
        "# Written by `pledgewatch provision gateway`; re-run it to change this file.",
        "[device]",
        f"id = {_toml_value(device)}",
        f"key_file = {_toml_value(KEY_FILE)}",
        f"state_dir = {_toml_value(str(state_dir))}",
    ]
    if key_store != "software":
        lines.append(f"key_store = {_toml_value(key_store)}   # the key is in the TPM; {KEYSTORE_FILE} describes it")
    if binding is not None:
        lines.append(binding_line(binding))
    if lender_key is not None:
        lines.append(f"lender_key = {_toml_value(lender_key.hex())}   # the lender's key: the only one whose signed "
                     "commands this gateway acts on")
    lines += [
        "",
        "[uplink]",
        f"lender = {_toml_value(lender)}",
        f"security_context = {_toml_value(context)}"
        + ("   # parked until `pledgewatch provision submit` installs the lender's context"
           if context == PARKED_DIR else ""),
    ]
    lines += [f"{key} = {_toml_value(value)}" for key, value in (uplink or {}).items()]
    if rules:
        lines += ["", "[rules]"] + [f"{key} = {_toml_value(value)}" for key, value in rules.items()]
    for table, entries in (("sensors", sensors), ("assets", assets)):
        for entry in entries:
            lines += ["", f"[[{table}]]"] + [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class GatewayPlan:
    """Everything `provision gateway` was asked to do, checked before anything is written."""

    device: str
    binding: AssetBinding
    lender: str
    lender_key: bytes
    config_dir: Path = Path("/etc/pledgewatch")
    state_dir: Path = Path("/var/lib/pledgewatch")
    modem_port: str | None = None
    sensors: tuple[dict, ...] = ()
    uplink: dict = field(default_factory=dict)
    assets: tuple[dict, ...] = ()
    rules: dict = field(default_factory=dict)
    technician: TechnicianProfile | None = None
    technician_id: str | None = None
    owner: Owner = field(default_factory=lambda: Owner.of(None))
    rotate: bool = False
    install_systemd: bool = False
    systemd_dir: Path = Path("/etc/systemd/system")
    install_udev: bool = False
    udev_dir: Path = Path("/etc/udev/rules.d")
    timeout: float = 20.0
    key_store: str = "software"         # or "tpm" (durable.keystore)
    tcti: str | None = None             # the TPM's TCTI; None: /dev/tpmrm0, then /dev/tpm0
    tpm_handle: int = DEFAULT_TPM_HANDLE

    def __post_init__(self) -> None:
        if self.key_store not in ("software", "tpm"):
            raise SetupError(f"--key-store {self.key_store!r}: use software or tpm")
        if self.tcti is not None and self.key_store != "tpm":
            raise SetupError("--tcti names a TPM: give it with --key-store tpm")
        try:
            check_id(self.device)
        except EnrollmentFormatError as exc:
            raise SetupError(str(exc)) from exc
        if self.technician is None and not self.technician_id:
            raise SetupError("name the technician: --profile (with the technician's key) or --technician ID")

    @property
    def technician_name(self) -> str:
        return self.technician.technician if self.technician is not None else self.technician_id

    @property
    def config_file(self) -> Path:
        return self.config_dir / CONFIG_FILE

    @property
    def key_file(self) -> Path:
        return self.config_dir / KEY_FILE

    @property
    def pending(self) -> PendingEnrollment:
        return PendingEnrollment(self.state_dir / "enrollment")


@dataclass
class GatewayResult:
    """What happened, for the table and for --json."""

    device: str
    kid: str
    identity: str               # "created", "kept" or "rotated"
    enrollment: str             # "enrolled", "already enrolled", "pending" (lender unreachable), "needs countersignature"
    config: str
    modem: dict | None = None
    pending_request: str | None = None
    installed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    binding: str | None = None   # the enrollment binding written to agent.toml (hex), once enrolled
    key_store: str = "software"  # or "tpm"
    algorithm: str = "EdDSA"     # or "ES256" (a TPM key)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def read_journal(config_dir: Path) -> dict | None:
    path = config_dir / JOURNAL_FILE
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SetupError(f"{path} cannot be read ({exc}); move it aside to provision afresh") from exc


def _write_context(directory: Path, params: oscore.ContextParameters, owner: Owner, rollback: Rollback) -> None:
    try:
        oscore.write_context(directory, params)
    except DurableError as exc:
        raise SetupError(f"cannot write the OSCORE context {directory}: {exc}") from exc
    rollback.created_tree(directory)
    chown_tree(directory, owner)


def _request(plan: GatewayPlan, identity: Identity, modem: ModemInfo | None,
             technician: Identity | None) -> tuple[EnrollmentRequest, nacl.public.PrivateKey]:
    response_key = nacl.public.PrivateKey.generate()
    hardware = modem.hardware() if modem is not None else {}
    nonce = os.urandom(16)
    attested = None
    if isinstance(identity, TpmKey):  # the TPM proves the key is inside it, when it has an EK certificate to show
        evidence = attest_tpm_key(identity, certify_data(plan.device, nonce))
        attested = TpmAttestation(**evidence) if evidence is not None else None
    body = EnrollmentBody(plan.device, "gateway", identity.public_key, plan.technician_name, hardware, plan.binding,
                          int(time.time()), nonce, bytes(response_key.public_key), attested)
    request = EnrollmentRequest.create(body, identity.sign)
    if technician is not None:
        request = request.countersign(technician)
    return request, response_key


async def provision_gateway(plan: GatewayPlan, step: Step = lambda _: None) -> GatewayResult:
    """Run `provision gateway` (see the module docstring). Raises a ProvisioningError with nothing left behind."""
    journal = read_journal(plan.config_dir)
    if journal is not None and journal.get("device") != plan.device and not plan.rotate:
        raise IdentityExistsError(
            f"this gateway is provisioned as {journal.get('device')} already (kid {journal.get('kid')}); "
            f"re-run with --device-id {journal.get('device')}, or give it a new identity with --rotate"
        )
    technician = plan.technician.identity() if plan.technician is not None else None
    modem = None
    if plan.modem_port is not None:
        step(f"reading the modem on {plan.modem_port}")
        modem = await read_modem(plan.modem_port)
    with Rollback() as rollback:
        for directory, mode, group_only in ((plan.config_dir, 0o750, True), (plan.state_dir, 0o700, False)):
            if ensure_dir(directory, mode, plan.owner, group_only=group_only):
                rollback.created_dir(directory)
        identity, how = _identity(plan, rollback, journal)
        try:
            result = await _provision_with(plan, identity, how, modem, technician, journal, rollback, step)
        finally:
            getattr(identity, "close", lambda: None)()  # a TPM key's connection
    if result.enrollment == "enrolled":
        plan.pending.clear()
        shutil.rmtree(plan.config_dir / PARKED_DIR, ignore_errors=True)
    return result


async def _provision_with(plan: GatewayPlan, identity, how: str, modem: ModemInfo | None,
                          technician: Identity | None, journal: dict | None, rollback: Rollback,
                          step: Step) -> GatewayResult:
    """Enrollment, config, journal and units for a gateway whose key is `identity` (inside the run's rollback)."""
    step(f"device {plan.device}: key {identity.kid.hex()} ({how}, {plan.key_store})")
    result = GatewayResult(plan.device, identity.kid.hex(), how, "", str(plan.config_file),
                           modem.to_json() if modem else None, key_store=plan.key_store,
                           algorithm=algorithm_name(identity.algorithm))
    enrolled = journal is not None and journal.get("enrolled") and journal.get("kid") == identity.kid.hex() \
        and (plan.config_dir / CONTEXT_DIR).is_dir()
    context_name = CONTEXT_DIR
    result.binding = binding_of(plan.lender_key, identity.public_key, plan.binding.asset).hex()
    if enrolled:
        result.enrollment = "already enrolled"
    else:
        context_name = await _enroll(plan, identity, modem, technician, rollback, result, step)
    _write_config(plan, context_name, rollback, result.binding)
    _write_journal(plan, identity, modem, result, rollback, journal)
    if plan.install_systemd:
        result.installed.append(install_unit(plan, rollback))
    if plan.install_udev:
        result.installed.append(install_udev_rule(plan.udev_dir, rollback))
    rollback.done()
    return result


def _identity(plan: GatewayPlan, rollback: Rollback, journal: dict | None) -> tuple[Identity, str]:
    """The gateway's key of `plan.key_store`: kept, created, or (--rotate) created with the old one retired."""
    key_file, description = plan.key_file, plan.config_dir / KEYSTORE_FILE
    stored = KeyStoreDescription.read(description).kind if description.exists() else \
        ("software" if key_file.exists() else None)
    if stored is not None and not plan.rotate:
        if stored != plan.key_store:
            raise IdentityExistsError(
                f"this gateway's key is a {stored} key already (kid {(journal or {}).get('kid', '?')}); re-run "
                f"with --key-store {stored}, or --rotate to give it a new {plan.key_store} key (a new identity)")
        if plan.key_store == "tpm":
            identity = _kept_tpm_key(plan, description, rollback)
        else:
            identity = Identity(read_key(key_file))
        if journal is not None and journal.get("kid") not in (None, identity.kid.hex()):
            getattr(identity, "close", lambda: None)()
            raise IdentityExistsError(f"{key_file if stored == 'software' else description} is not the key this "
                                      f"gateway was enrolled with (kid {journal.get('kid')}); restore that key, "
                                      "or --rotate")
        return identity, "kept"
    how = "created"
    tcti = (plan.tcti or default_tcti()) if plan.key_store == "tpm" else None  # no TPM: one line, nothing written
    if stored is not None:  # --rotate: keep the old key (or its description) for the evidence it signed
        stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
        for old in (key_file, description):
            if old.exists():
                retired = old.with_name(f"{old.name}.retired-{stamp}")
                os.link(old, retired)
                rollback.created_file(retired)
                rollback.replaced_file(old)
                old.unlink()
        for stale in (plan.config_dir / CONTEXT_DIR, plan.config_dir / PARKED_DIR):
            if stale.exists():
                aside = stale.with_name(f"{stale.name}.retired-{stamp}")
                stale.rename(aside)
                rollback.add(f"restore {stale}", lambda a=aside, s=stale: a.rename(s))
        plan.pending.clear()
        how = "rotated"
    if plan.key_store == "software":
        identity = Identity(create_key(key_file))
        rollback.created_file(key_file)
        plan.owner.apply(key_file)
        return identity, how
    if stored == "tpm":  # the retired TPM key leaves the chip's handle (its public key stays retired beside)
        retired = KeyStoreDescription.read(description.with_name(f"{description.name}.retired-{stamp}"))
        if retired.handle == plan.tpm_handle and retired.public_key is not None:
            evict_tpm_key(tcti, retired.handle, retired.public_key)
    identity = create_device_key(plan.config_dir, "tpm", tcti=tcti, handle=plan.tpm_handle)
    public_key = identity.public_key

    def evict() -> None:  # the run failed before the lender knew the key: take it out of the chip again
        evict_tpm_key(tcti, plan.tpm_handle, public_key)
    rollback.add(f"evict the new TPM key at {plan.tpm_handle:#x}", evict)
    rollback.created_file(description)
    plan.owner.apply(description)
    return identity, how


def _kept_tpm_key(plan: GatewayPlan, description: Path, rollback: Rollback):
    """The TPM key `description` names; with --tcti, the description is updated to reach the TPM there."""
    described = KeyStoreDescription.read(description)
    if plan.tcti is not None and plan.tcti != described.tcti:
        rollback.replaced_file(description)
        text = json.dumps({**described.to_json(), "tcti": plan.tcti}, indent=1) + "\n"
        write_file(description, text.encode(), 0o600, plan.owner)
    return open_device_key(plan.config_dir, kind="tpm")


async def _enroll(plan: GatewayPlan, identity: Identity, modem: ModemInfo | None, technician: Identity | None,
                  rollback: Rollback, result: GatewayResult, step: Step) -> str:
    pending = plan.pending
    request = response_key = None
    if pending.exists():
        request, response_key = pending.load()
        if request.body.public_key != identity.public_key or request.body.device != plan.device:
            pending.clear()
            request = None
        elif technician is not None and not request.countersigned:
            request = request.countersign(technician)
            pending.update(request)
    if request is None:
        request, response_key = _request(plan, identity, modem, technician)
        pending.save(request, response_key)
        rollback.add(f"remove {pending.directory}", pending.clear)
    result.pending_request = str(pending.request_file)
    if not request.countersigned:
        result.enrollment = "needs countersignature"
        result.notes.append(f"countersign and send from the technician's laptop: pledgewatch provision submit "
                            f"{pending.request_file} (then the same command on this gateway installs the answer)")
        return _park(plan, rollback)
    step(f"enrolling {plan.device} with the lender at {plan.lender}")
    try:
        response = await send(plan.lender, request, timeout=plan.timeout)
    except LenderUnreachableError as exc:
        result.enrollment = "pending"
        result.notes.append(f"{exc}: the request is saved; the agent spools signed readings meanwhile. "
                            f"When there is signal: pledgewatch provision submit {pending.request_file}")
        return _park(plan, rollback)
    answer, context = accept(response, request, plan.lender_key, response_key,
                             activate=(lambda id_object, secret: activate_credential(identity, id_object, secret))
                             if isinstance(identity, TpmKey) else None)
    if answer.credential is not None:
        result.notes.append("the lender checked the TPM's attestation: the key is listed tpm-attested")
    elif request.body.version == 2 and request.body.attestation is None:
        result.notes.append("the TPM has no EK certificate to show: the lender lists this key as software")
    target = plan.config_dir / CONTEXT_DIR
    if target.exists():
        aside = target.with_name(f"{CONTEXT_DIR}.retired-{int(time.time())}")
        target.rename(aside)
        rollback.add(f"restore {target}", lambda: aside.rename(target))
    _write_context(target, context, plan.owner, rollback)
    # From here the lender knows this key: keep key and request even if a later step fails, so a re-run
    # sends the same request again and gets the same answer.
    rollback.done()
    result.enrollment = "enrolled"
    result.binding = binding_of(plan.lender_key, identity.public_key, answer.asset).hex()
    step(f"enrolled {plan.device} for asset {answer.asset} (binding {result.binding})")
    return CONTEXT_DIR


def _park(plan: GatewayPlan, rollback: Rollback) -> str:
    parked = plan.config_dir / PARKED_DIR
    if not parked.exists():
        # A context no lender knows (random secret, random 7-byte id): the agent's requests are refused with
        # 4.01 and nothing it spools is acked, so nothing is deleted before the real context arrives.
        _write_context(parked, oscore.ContextParameters.generate(os.urandom(oscore.MAX_ID_BYTES), b""),
                       plan.owner, rollback)
    return PARKED_DIR


def _write_config(plan: GatewayPlan, context_name: str, rollback: Rollback, binding: str | None) -> None:
    rollback.replaced_file(plan.config_file)
    text = render_config(plan.device, plan.state_dir, plan.lender, context_name, plan.sensors, plan.uplink,
                         plan.assets, plan.rules, binding, plan.key_store, plan.lender_key)
    write_file(plan.config_file, text.encode(), 0o640, plan.owner, group_only=True)
    binding = plan.config_dir / BINDING_FILE
    rollback.replaced_file(binding)
    write_file(binding, json.dumps(plan.binding.to_map(), indent=1).encode() + b"\n", 0o640, plan.owner,
               group_only=True)
    from agent import config as agent_config  # the agent must accept what we wrote
    from agent.exc import ConfigError
    try:
        agent_config.load(plan.config_file)
    except ConfigError as exc:
        raise SetupError(f"the agent refuses the config this run wrote: {exc}") from exc


def _write_journal(plan: GatewayPlan, identity: Identity, modem: ModemInfo | None, result: GatewayResult,
                   rollback: Rollback, previous: dict | None) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    journal = {
        "kind": "gateway", "device": plan.device, "kid": identity.kid.hex(),
        "public_key_hex": identity.public_key.hex(), "key_store": plan.key_store,
        "algorithm": algorithm_name(identity.algorithm),
        "enrolled": result.enrollment in ("enrolled", "already enrolled"),
        "enrollment": result.enrollment, "technician": plan.technician_name, "binding": plan.binding.to_map(),
        "modem": modem.to_json() if modem else (previous or {}).get("modem"),
        "lender": plan.lender, "lender_key_hex": plan.lender_key.hex(), "enrollment_binding": result.binding,
        "provisioned_at": (previous or {}).get("provisioned_at") if result.identity == "kept" else now,
        "updated_at": now,
    }
    if result.enrollment == "enrolled":
        journal["enrolled_at"] = now
    elif previous and previous.get("enrolled_at") and result.identity == "kept":
        journal["enrolled_at"] = previous["enrolled_at"]
    path = plan.config_dir / JOURNAL_FILE
    rollback.replaced_file(path)
    write_file(path, json.dumps(journal, indent=1).encode() + b"\n", 0o640, plan.owner, group_only=True)


def complete_enrollment(config_dir: Path, state_dir: Path, response: bytes, owner: Owner) -> str:
    """Install the lender's answer to this gateway's pending request (`provision submit` on the gateway)."""
    journal = read_journal(config_dir)
    pending = PendingEnrollment(state_dir / "enrollment")
    if journal is None or not pending.exists():
        raise DeviceEnrollmentError(f"this machine has no pending enrollment under {state_dir} to install an answer "
                                    "into; run the submit on the gateway that made the request")
    request, response_key = pending.load()
    key = open_device_key(config_dir, kind="tpm") if request.body.attestation is not None else None
    try:
        answer, context = accept(response, request, bytes.fromhex(journal["lender_key_hex"]), response_key,
                                 activate=(lambda id_object, secret: activate_credential(key, id_object, secret))
                                 if key is not None else None)
    finally:
        if key is not None:
            key.close()
    with Rollback() as rollback:
        target = config_dir / CONTEXT_DIR
        if target.exists():
            raise DeviceEnrollmentError(f"{target} exists already: this gateway is enrolled")
        _write_context(target, context, owner, rollback)
        config_file = config_dir / CONFIG_FILE
        rollback.replaced_file(config_file)
        text = config_file.read_text("utf-8").replace(f'security_context = "{PARKED_DIR}"',
                                                      f'security_context = "{CONTEXT_DIR}"', 1)
        text = text.replace("   # parked until `pledgewatch provision submit` installs the lender's context", "")
        binding = binding_of(bytes.fromhex(journal["lender_key_hex"]), request.body.public_key, answer.asset).hex()
        text = _with_binding(text, binding)
        write_file(config_file, text.encode(), 0o640, owner, group_only=True)
        journal.update(enrolled=True, enrollment="enrolled", enrollment_binding=binding,
                       enrolled_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        write_file(config_dir / JOURNAL_FILE, json.dumps(journal, indent=1).encode() + b"\n", 0o640, owner,
                   group_only=True)
        rollback.done()
    pending.clear()
    shutil.rmtree(config_dir / PARKED_DIR, ignore_errors=True)
    return answer.asset


def _with_binding(text: str, binding: str) -> str:
    """agent.toml `text` with its [device] binding set to `binding` (replacing one there was)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("[device]")), None)
    if start is None:
        raise DeviceEnrollmentError("agent.toml has no [device] table to write the enrollment binding into; "
                                    "re-run pledgewatch provision gateway")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    table = [line for line in lines[start + 1:end] if not line.lstrip().startswith("binding")]
    while table and not table[-1].strip():
        table.pop()
    rest = lines[end:]
    return "\n".join(lines[:start + 1] + table + [binding_line(binding)] + ([""] + rest if rest else [])) + "\n"


def restart_agent() -> str:
    """Restart the agent under systemd so it loads the new context; a note when systemd is not running."""
    if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
        return "restart the agent so it loads its new OSCORE context (systemd is not running here)"
    done = subprocess.run(["systemctl", "try-restart", "pledgewatch-agent.service"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"systemctl try-restart pledgewatch-agent failed: {done.stderr.strip()}; restart the agent by hand"
    return "restarted pledgewatch-agent.service"


def _exec_start(config_file: Path) -> str:
    beside = Path(sys.executable).parent / "pledgewatch"
    program = str(beside) if beside.exists() else (shutil.which("pledgewatch") or f"{sys.executable} -m pledgewatch")
    return f"{program} agent run --config {config_file}"


def render_unit(plan: GatewayPlan) -> str:
    """The shipped unit (provisioning/deploy/pledgewatch-agent.service) with this gateway's program, config, user and paths."""
    import grp
    groups = []
    for name in ("dialout", "gpio", "tss"):  # the modem, the sensors, the TPM (/dev/tpmrm0 is root:tss 0660)
        try:
            grp.getgrnam(name)
            groups.append(name)
        except KeyError:
            pass
    out = []
    for line in UNIT_TEMPLATE.read_text("utf-8").splitlines():
        key = line.split("=", 1)[0]
        if key == "ExecStart":
            line = f"ExecStart={_exec_start(plan.config_file)}"
        elif key == "User":
            line = f"User={plan.owner.name}"
        elif key == "Group":
            line = f"Group={plan.owner.group}"
        elif key == "SupplementaryGroups":
            line = f"SupplementaryGroups={' '.join(groups)}" if groups else "# SupplementaryGroups: none exist here"
        elif key == "ReadWritePaths":
            line = f"ReadWritePaths={plan.state_dir} {plan.config_dir}"
        elif key in ("StateDirectory", "StateDirectoryMode") and plan.state_dir != Path("/var/lib/pledgewatch"):
            line = f"# {line} (state in {plan.state_dir})"
        out.append(line)
    return "\n".join(out) + "\n"


def install_unit(plan: GatewayPlan, rollback: Rollback) -> str:
    target = plan.systemd_dir / "pledgewatch-agent.service"
    ensure_dir(plan.systemd_dir, 0o755)
    rollback.replaced_file(target)
    write_file(target, render_unit(plan).encode(), 0o644)
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        subprocess.run(["systemctl", "enable", "pledgewatch-agent.service"], check=False, capture_output=True)
    return str(target)


def install_udev_rule(udev_dir: Path, rollback: Rollback) -> str:
    target = udev_dir / UDEV_RULE.name
    ensure_dir(udev_dir, 0o755)
    rollback.replaced_file(target)
    write_file(target, UDEV_RULE.read_bytes(), 0o644)
    if Path("/run/udev/control").exists() and shutil.which("udevadm"):
        subprocess.run(["udevadm", "control", "--reload"], check=False)
        subprocess.run(["udevadm", "trigger", "--subsystem-match=tty"], check=False)
    return str(target)


def run(plan: GatewayPlan, step: Step = lambda _: None) -> GatewayResult:
    return asyncio.run(provision_gateway(plan, step))


def site_from(args: argparse.Namespace, lender: str, lender_key: bytes, technician: TechnicianProfile | None):
    """The site file from --asset-file, or from the lender with --asset (asked with the technician's key)."""
    if args.asset_file is not None:
        return load_site(args.asset_file)
    if technician is None:
        raise SetupError("the lender hands site files only to registered technicians, signed with their key: "
                         "use your technician profile (--profile) to fetch --asset, or give --asset-file")
    return asyncio.run(fetch_site(lender, args.asset, lender_key, technician, timeout=args.timeout))
