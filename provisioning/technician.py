"""The technician's profile on the laptop: who they are, their signing key (0600), and which lender they enroll with.

    ~/.config/pledgewatch/technician.toml   (or $PLEDGEWATCH_TECHNICIAN)

    [technician]
    id = "tech-ana"
    key_file = "technician.key"       # relative to this file; 32-byte Ed25519 seed, mode 0600

    [lender]
    uri = "coap://lender.example:5683"
    enroll_key = "…64 hex digits…"    # the lender's enrollment public key, from `lender technicians add`

The technician's key countersigns enrollment requests and installation
reports; the lender's enrollment key is pinned here so a response that did
not come from the lender (a spoofed answer on plain CoAP) is refused.
"""
from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from durable.exc import KeyFileError
from durable.keyfile import create_key, read_key
from provisioning.exc import SetupError, TechnicianError
from provisioning.install import write_file
from telemetry.identity import Identity

DEFAULT_PROFILE = Path(os.environ.get("PLEDGEWATCH_TECHNICIAN", "~/.config/pledgewatch/technician.toml")).expanduser()


def parse_key(text: str, what: str = "lender enrollment key") -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise TechnicianError(f"{what} {text!r} is not 64 hex digits (an Ed25519 public key)")
    return key


@dataclass(frozen=True, slots=True)
class TechnicianProfile:
    """A loaded profile (see the module docstring)."""

    path: Path
    technician: str
    key_file: Path
    lender: str | None = None
    lender_key: bytes | None = None

    def identity(self) -> Identity:
        """The technician's signing key; refuses a key file others can read."""
        try:
            return Identity(read_key(self.key_file))
        except KeyFileError as exc:
            raise TechnicianError(f"technician key: {exc}") from exc


def load_profile(path: str | os.PathLike = DEFAULT_PROFILE) -> TechnicianProfile:
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise TechnicianError(f"no technician profile at {path}: create one with "
                              "`pledgewatch provision technician init --id YOUR-ID --lender URI --lender-key HEX`"
                              ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TechnicianError(f"technician profile {path} cannot be read: {exc}") from exc
    section = data.get("technician", {})
    lender = data.get("lender", {})
    if not isinstance(section, dict) or not isinstance(section.get("id"), str) or not section["id"]:
        raise TechnicianError(f"{path}: [technician] needs id")
    key_file = path.parent / section.get("key_file", "technician.key")
    enroll_key = lender.get("enroll_key") if isinstance(lender, dict) else None
    return TechnicianProfile(
        path, section["id"], key_file,
        lender.get("uri") if isinstance(lender, dict) else None,
        parse_key(enroll_key, f"{path}: [lender] enroll_key") if enroll_key else None,
    )


def init_profile(path: str | os.PathLike, technician: str, *, lender: str | None = None,
                 lender_key: bytes | None = None) -> tuple[TechnicianProfile, bool]:
    """Create or update a profile; make the key (0600) only if there is none. Returns (profile, key_created)."""
    path = Path(path).expanduser()
    previous = load_profile(path) if path.exists() else None
    if previous is not None and previous.technician != technician:
        raise TechnicianError(f"{path} is the profile of technician {previous.technician}; "
                              "use --profile for another technician")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file = previous.key_file if previous else path.parent / "technician.key"
    created = not key_file.exists()
    if created:
        create_key(key_file)
    lender = lender or (previous.lender if previous else None)
    lender_key = lender_key or (previous.lender_key if previous else None)
    lines = ["[technician]", f'id = "{technician}"', f'key_file = "{os.path.relpath(key_file, path.parent)}"', ""]
    if lender or lender_key:
        lines.append("[lender]")
        if lender:
            lines.append(f'uri = "{lender}"')
        if lender_key:
            lines.append(f'enroll_key = "{lender_key.hex()}"')
    write_file(path, ("\n".join(lines) + "\n").encode(), 0o600)
    return load_profile(path), created


def technician_from(args: argparse.Namespace, *, required: bool) -> tuple[TechnicianProfile | None, str, bytes]:
    """(profile or None, lender URI, lender key) from --profile / --lender / --lender-key."""
    path = args.profile or DEFAULT_PROFILE
    profile = None
    try:
        profile = load_profile(path)
    except TechnicianError:
        if required:
            raise
    lender = args.lender or (profile.lender if profile else None)
    key_text = args.lender_key
    lender_key = parse_key(key_text) if key_text else (profile.lender_key if profile else None)
    if not lender:
        raise SetupError("which lender? pass --lender coap://HOST:PORT or set [lender] uri in the technician profile")
    if lender_key is None:
        raise SetupError("the lender's enrollment key is not pinned: pass --lender-key HEX (from `pledgewatch lender "
                         "technicians add`) or run `provision technician init --lender-key HEX`")
    return profile, lender, lender_key
