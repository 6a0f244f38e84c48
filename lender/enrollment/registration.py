"""Registration by the lender's staff (`pledgewatch lender register`): a device's key and its OSCORE context pair.

The other way in is an enrollment request (lender.enrollment.desk); both end
in the same registry row (lender.evidence.registry).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lender.enrollment import contexts as oscore
from lender.evidence.registry import Device, Registry, check_device_id
from lender.exc import DeviceExistsError
from telemetry.identity import kid_of

OSCORE_DIR = "oscore"                  # lender-side contexts, under the data directory
DEVICE_CONTEXTS_DIR = "device-contexts"  # default home of the device-side contexts made at registration


@dataclass(frozen=True, slots=True)
class Registration:
    """What `register` did: the device row, and where the device's side of its OSCORE context went."""

    device: Device
    device_context: Path | None


def register(
    registry: Registry,
    data_dir: str | Path,
    device_id: str,
    public_key: bytes,
    *,
    asset: str | None = None,
    with_oscore: bool = True,
    device_context: str | Path | None = None,
    now: float | None = None,
) -> Registration:
    """Register a device, creating its OSCORE context pair unless `with_oscore` is False.

    The lender's side goes to ``DATA/oscore/<device>/``, the device's side to
    `device_context` (default ``DATA/device-contexts/<device>/``), both mode
    0700 with 0600 files, for the technician to install on the gateway. If
    anything fails, whatever was created is removed again.
    """
    check_device_id(device_id)
    data_dir = Path(data_dir)
    if registry.device(device_id) is not None:
        raise DeviceExistsError(f"device {device_id} is registered already (see `pledgewatch lender devices`)")
    holder = registry.device_by_kid(kid_of(public_key))
    if holder is not None:
        raise DeviceExistsError(
            f"public key with kid {kid_of(public_key).hex()} is registered already, to device {holder.device}; "
            "every device needs its own key"
        )
    now = time.time() if now is None else now
    oscore_context = oscore_id = device_side = None
    if with_oscore:
        device_side = Path(device_context) if device_context is not None else data_dir / DEVICE_CONTEXTS_DIR / device_id
        contexts_root = data_dir / OSCORE_DIR
        params = oscore.create_context_pair(contexts_root, device_id, device_side)
        oscore_context = f"{OSCORE_DIR}/{device_id}"
        oscore_id = params.sender_id
    device = Device(
        device=device_id, public_key=public_key, registered_at=now, asset=asset,
        oscore_context=oscore_context, oscore_id=oscore_id,
    )
    try:
        registry.add_device(device)
    except BaseException:
        if device_side is not None:
            shutil.rmtree(data_dir / OSCORE_DIR / device_id, ignore_errors=True)
            shutil.rmtree(device_side, ignore_errors=True)
        raise
    return Registration(device, device_side)
