"""Model detection: which modem is on the port (ATI, then AT+CGMM) and which driver fits it.

Quectel answers ATI with three bare lines (manufacturer, model, ``Revision:``);
SIMCom with ``Manufacturer:`` / ``Model:`` / ``Revision:`` lines (Quectel
RM5xxQ/EC25 AT Commands Manual "ATI Display Product Identification
Information"; SIMCom SIM7600 AT Command Manual "ATI").
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from drivers.at import AtChannel
from drivers.exc import AtResultError, AtTimeoutError, UnknownModemError
from drivers.modem.generic import Modem
from drivers.modem.quectel import QuectelModem
from drivers.modem.simcom import SimcomModem
from drivers.modem.values import ModelIdentity

#: model-name pattern → family key; the first match wins.
FAMILIES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"RM500Q", re.I), "rm500q"),
    (re.compile(r"RM520N", re.I), "rm520n"),
    (re.compile(r"EC25", re.I), "ec25"),
    (re.compile(r"SIM7600", re.I), "sim7600"),
    (re.compile(r"SIM8200", re.I), "sim8200"),
)

DRIVERS: dict[str, type[Modem]] = {
    "rm500q": QuectelModem, "rm520n": QuectelModem, "ec25": QuectelModem,
    "sim7600": SimcomModem, "sim8200": SimcomModem, "generic": Modem,
}

_PRINTABLE = re.compile(r"[ -~]+")


def family_of(model: str) -> str:
    for rx, family in FAMILIES:
        if rx.search(model):
            return family
    return "generic"


def parse_ati(lines: Sequence[str]) -> ModelIdentity:
    """Manufacturer, model and revision from ATI's lines, in either vendor's layout."""
    labelled: dict[str, str] = {}
    bare: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line or not _PRINTABLE.fullmatch(line):
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("manufacturer", "model", "revision", "imei"):
            labelled[key.strip().lower()] = value.strip()
        elif not line.startswith("+"):
            bare.append(line)
    manufacturer = labelled.get("manufacturer") or (bare[0] if bare else "")
    model = labelled.get("model") or (bare[1] if len(bare) > 1 else "")
    if not manufacturer or not model:
        raise UnknownModemError(f"ATI answered {list(lines)[:5]!r}: no manufacturer and model in it")
    return ModelIdentity(manufacturer, model, labelled.get("revision"), family_of(model))


async def identify(channel: AtChannel, timeout: float = 2.0) -> ModelIdentity:
    """Ask the modem who it is: ATI, falling back to AT+CGMI / AT+CGMM."""
    try:
        return parse_ati((await channel.command("ATI", timeout=timeout)).lines)
    except (AtResultError, AtTimeoutError, UnknownModemError) as ati_error:
        try:
            manufacturer = (await channel.command("AT+CGMI", timeout=timeout)).lines
            model = (await channel.command("AT+CGMM", timeout=timeout)).lines
        except (AtResultError, AtTimeoutError) as exc:
            raise UnknownModemError(f"modem on {channel.config.url} answered neither ATI ({ati_error}) "
                                    f"nor AT+CGMI/AT+CGMM ({exc})") from exc
        text = [line for line in model if _PRINTABLE.fullmatch(line)]
        if not text:
            raise UnknownModemError(f"AT+CGMM on {channel.config.url} answered {list(model)!r}: no model name"
                                    ) from ati_error
        maker = next((line for line in manufacturer if _PRINTABLE.fullmatch(line)), "")
        return ModelIdentity(maker, text[0], None, family_of(text[0]))


async def open_modem(channel: AtChannel, *, require_known: bool = False) -> Modem:
    """Identify the modem on an open channel and return the driver for it.

    An unrecognised model gets the generic 27.007 driver, unless
    `require_known`, which raises `UnknownModemError` instead.
    """
    identity = await identify(channel)
    if identity.family == "generic" and require_known:
        raise UnknownModemError(f"{identity.manufacturer} {identity.model} on {channel.config.url} is not a "
                                f"supported model ({', '.join(sorted(set(DRIVERS) - {'generic'}))})")
    return DRIVERS[identity.family](channel, identity)
