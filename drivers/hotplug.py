"""drivers.hotplug — find the modem's AT port among the USB serial ports and follow it as it comes and goes.

A cellular modem on USB shows up as several ttys, one per USB interface
(diagnostics, NMEA, AT, PPP, …), and their /dev/ttyUSB numbers change with
the order of enumeration. The AT port is the tty whose parent USB interface
has a known number on a device with a known vendor:product id. udev's usb_id
builtin (60-serial.rules) puts all three on the tty as properties:
ID_VENDOR_ID, ID_MODEL_ID and ID_USB_INTERFACE_NUM; when they are missing (a
udev without that rule) they are read from the parent devices' sysfs
attributes idVendor, idProduct and bInterfaceNumber.

`identify_at_port` is the pure matcher over anything shaped like a
`pyudev.Device`. `ModemPortWatcher` enumerates the ports present at start
(`scan`) and turns a `pyudev.Monitor`'s tty events into `HotplugEvent`s
(`events()` async iterator, or listeners), so the agent can close the port on
`remove` and reopen it on `add`. A remove event is matched from its
properties, or, when udev sends none, by the sysfs path of the port seen
added. The udev rule that gives the same port a stable symlink is
drivers/udev/99-pledgewatch-modem.rules; keep the two tables in step.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from drivers.exc import HotplugError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModemUsbProfile:
    """A modem model as USB shows it: vendor:product id (lowercase hex) and the AT port's interface."""

    model: str
    vendor_id: str
    product_id: str
    at_interface: int

    def __post_init__(self) -> None:
        for label in ("vendor_id", "product_id"):
            value = getattr(self, label)
            if len(value) != 4 or any(c not in "0123456789abcdef" for c in value):
                raise ValueError(f"{self.model}: {label} {value!r} must be 4 lowercase hex digits, as lsusb prints it")
        if not 0 <= self.at_interface <= 255:
            raise ValueError(f"{self.model}: at_interface {self.at_interface} must be a USB interface number 0..255")


# Interface layouts in the default USB composition (Quectel AT+QCFG="usbnet"
# 0/1/2, i.e. RMNET, ECM or MBIM). Quirk: in RNDIS mode ("usbnet",3) Quectel
# puts two RNDIS interfaces first and the AT port moves to interface 4
# (Quectel forum, staff answer in "Can't send AT command after changing
# data_interface"); pass a profile with at_interface=4 for such a unit.
KNOWN_MODEMS: tuple[ModemUsbProfile, ...] = (
    # 0:DIAG 1:NMEA 2:AT 3:AT/PPP 4:network — ModemManager
    # src/plugins/quectel/77-mm-quectel-port-types.rules, "Quectel RM500"
    # (port hints contributed by Quectel, commit "quectel: add port type hints
    # for the Quectel 5G RM500", 2020).
    ModemUsbProfile("Quectel RM500Q", "2c7c", "0800", 2),
    # "0x0801: DIAG + NMEA + AT + MODEM + RMNET", interfaces 0..4 in that
    # order — Linux commit d640c4cb8f2f "USB: serial: option: add Quectel RM520N".
    ModemUsbProfile("Quectel RM520N", "2c7c", "0801", 2),
    # 0:DIAG 1:NMEA 2:AT 3:PPP 4:QMI — Quectel WCDMA&LTE Linux USB Driver User
    # Guide (EC25 = 2c7c:0125); ModemManager 77-mm-quectel-port-types.rules,
    # "Quectel EC25/EG25": if #2 AT primary.
    ModemUsbProfile("Quectel EC25", "2c7c", "0125", 2),
    # 0:DIAG 1:NMEA 2:AT 3:PPP 4:audio 5:network — ModemManager
    # src/plugins/simtech/77-mm-simtech-port-types.rules, "SIM7000, SIM7100,
    # SIM7600...": if 02 AT primary. The SIM8200 enumerates with the same id.
    ModemUsbProfile("SIMCom SIM7600/SIM8200", "1e0e", "9001", 2),
)


class UdevDevice(Protocol):
    """The part of `pyudev.Device` this module uses; a real pyudev.Device satisfies it."""

    @property
    def action(self) -> str | None: ...
    @property
    def subsystem(self) -> str | None: ...
    @property
    def device_node(self) -> str | None: ...
    @property
    def sys_path(self) -> str: ...
    @property
    def properties(self) -> Mapping[str, str]: ...
    def find_parent(self, subsystem: str, device_type: str | None = None) -> Any: ...


class UdevMonitor(Protocol):
    """The part of `pyudev.Monitor` this module uses."""

    def fileno(self) -> int: ...
    def poll(self, timeout: float | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class ModemPort:
    """The modem's AT port as found: open `device_node` (or the rule's stable symlink)."""

    model: str
    vendor_id: str
    product_id: str
    interface: int
    device_node: str
    sys_path: str


@dataclass(frozen=True, slots=True)
class HotplugEvent:
    action: Literal["add", "remove"]
    port: ModemPort


def _attribute(device: Any, name: str) -> str | None:
    """A sysfs attribute of a pyudev device as text, or None."""
    if device is None:
        return None
    try:
        value = device.attributes.get(name)
    except (AttributeError, KeyError, OSError):
        return None
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip().lower()


def _usb_identity(device: UdevDevice) -> tuple[str, str, int] | None:
    """(vendor id, product id, interface number) of a USB tty, from properties or the parent devices."""
    properties = device.properties
    vendor = properties.get("ID_VENDOR_ID")
    product = properties.get("ID_MODEL_ID")
    interface = properties.get("ID_USB_INTERFACE_NUM")
    if not (vendor and product and interface):
        try:
            usb_interface = device.find_parent("usb", "usb_interface")
            usb_device = device.find_parent("usb", "usb_device")
        except Exception:  # pyudev raises assorted errors once a device has left sysfs
            log.debug("no USB parents for %s", device.sys_path, exc_info=True)
            return None
        vendor = vendor or _attribute(usb_device, "idVendor")
        product = product or _attribute(usb_device, "idProduct")
        interface = interface or _attribute(usb_interface, "bInterfaceNumber")
    if not (vendor and product and interface):
        return None
    try:
        number = int(interface, 16)  # bInterfaceNumber and ID_USB_INTERFACE_NUM are two hex digits
    except ValueError:
        return None
    return vendor.lower(), product.lower(), number


def identify_at_port(device: UdevDevice, modems: Iterable[ModemUsbProfile] = KNOWN_MODEMS) -> ModemPort | None:
    """The `ModemPort` if `device` is the AT tty of a known modem, else None."""
    if device.subsystem != "tty" or not device.device_node:
        return None
    identity = _usb_identity(device)
    if identity is None:
        return None
    vendor, product, interface = identity
    for profile in modems:
        if (profile.vendor_id, profile.product_id, profile.at_interface) == (vendor, product, interface):
            return ModemPort(profile.model, vendor, product, interface, device.device_node, device.sys_path)
    return None


HotplugListener = Callable[[HotplugEvent], None]


class ModemPortWatcher:
    """Which modem AT ports exist now, and their adds and removes as they happen.

    `context` is a `pyudev.Context` (for `scan`), `monitor` a started or
    unstarted `pyudev.Monitor` filtered to ttys; both default to the real ones.
    """

    def __init__(
        self,
        *,
        context: Any = None,
        monitor: UdevMonitor | None = None,
        modems: Iterable[ModemUsbProfile] = KNOWN_MODEMS,
    ) -> None:
        self.modems = tuple(modems)
        self._context = context
        self._monitor = monitor
        self._present: dict[str, ModemPort] = {}
        self._listeners: list[HotplugListener] = []

    @property
    def present(self) -> list[ModemPort]:
        """The AT ports currently known to exist."""
        return list(self._present.values())

    def subscribe(self, listener: HotplugListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _udev_context(self) -> Any:
        if self._context is None:
            import pyudev  # noqa: PLC0415  (libudev is only needed where udev is)

            try:
                self._context = pyudev.Context()
            except Exception as exc:
                raise HotplugError(f"cannot open udev (libudev): {exc}; is this a Linux host with udev?") from exc
        return self._context

    def _udev_monitor(self) -> UdevMonitor:
        if self._monitor is None:
            import pyudev  # noqa: PLC0415

            try:
                monitor = pyudev.Monitor.from_netlink(self._udev_context())
                monitor.filter_by("tty")
                monitor.start()
            except Exception as exc:
                raise HotplugError(
                    f"cannot listen to udev events: {exc}; the agent needs a udev netlink socket (run on the host, "
                    "or give the container the host's network namespace)"
                ) from exc
            self._monitor = monitor
        return self._monitor

    def scan(self) -> list[ModemPort]:
        """The AT ports present now (call at start, before listening to events)."""
        found = []
        for device in self._udev_context().list_devices(subsystem="tty"):
            port = identify_at_port(device, self.modems)
            if port is not None:
                self._present[port.sys_path] = port
                found.append(port)
        return found

    def handle(self, device: UdevDevice) -> HotplugEvent | None:
        """Turn one udev event into a HotplugEvent (or None) and tell the listeners."""
        action = device.action
        if action == "add":
            port = identify_at_port(device, self.modems)
            if port is None or self._present.get(port.sys_path) == port:
                return None  # not our port, or seen already by scan()
            self._present[port.sys_path] = port
            event = HotplugEvent("add", port)
        elif action == "remove":
            port = self._present.pop(device.sys_path, None) or identify_at_port(device, self.modems)
            if port is None:
                return None
            event = HotplugEvent("remove", port)
        else:
            return None  # change/bind/move: the port stays where it is
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("hot-plug listener %r failed on %s", listener, event)
        return event

    async def events(self) -> AsyncIterator[HotplugEvent]:
        """Yield modem AT port adds and removes until the consumer stops iterating."""
        monitor = self._udev_monitor()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[HotplugEvent | HotplugError] = asyncio.Queue()

        def readable() -> None:
            while True:
                try:
                    device = monitor.poll(timeout=0)
                except Exception as exc:  # a broken netlink socket
                    error = HotplugError(f"reading udev events failed: {exc}; restart the watcher")
                    error.__cause__ = exc
                    loop.remove_reader(monitor.fileno())
                    queue.put_nowait(error)
                    return
                if device is None:
                    return
                event = self.handle(device)
                if event is not None:
                    queue.put_nowait(event)

        loop.add_reader(monitor.fileno(), readable)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, HotplugError):
                    raise item
                yield item
        finally:
            loop.remove_reader(monitor.fileno())
