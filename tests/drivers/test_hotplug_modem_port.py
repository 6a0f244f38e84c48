"""Finding the modem's AT port among USB ttys and following it through udev add/remove events."""
from __future__ import annotations

import asyncio
import os
from collections import deque

import pyudev
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.exc import DriverError, HotplugError
from drivers.hotplug import KNOWN_MODEMS, HotplugEvent, ModemPort, ModemPortWatcher, ModemUsbProfile, identify_at_port


class FakeAttributes:
    """pyudev's Attributes: `get` returns the sysfs file's bytes."""

    def __init__(self, values: dict[str, bytes]) -> None:
        self._values = values

    def get(self, name: str, default=None):
        return self._values.get(name, default)


class FakeParent:
    def __init__(self, **attributes: bytes) -> None:
        self.attributes = FakeAttributes(attributes)


class FakeUdevDevice:
    """A udev event's device with pyudev.Device's interface: what udevd sends for a USB tty."""

    def __init__(self, action, node, *, vendor=None, product=None, interface=None, with_properties=True, subsystem="tty"):
        self.action = action
        self.subsystem = subsystem
        self.device_node = node
        name = node.rsplit("/", 1)[-1] if node else "none"
        self.sys_path = f"/sys/devices/platform/xhci/usb1/1-1/1-1:1.{interface or 0}/{name}/tty/{name}"
        self.properties = {"SUBSYSTEM": subsystem, "DEVNAME": node or ""}
        if with_properties and vendor:
            self.properties |= {"ID_VENDOR_ID": vendor, "ID_MODEL_ID": product, "ID_USB_INTERFACE_NUM": interface}
        self._parents = {}
        if vendor and action != "remove":  # after a remove the sysfs parents are gone
            self._parents = {
                "usb_device": FakeParent(idVendor=vendor.encode() + b"\n", idProduct=product.encode() + b"\n"),
                "usb_interface": FakeParent(bInterfaceNumber=interface.encode() + b"\n"),
            }

    def find_parent(self, subsystem, device_type=None):
        return self._parents.get(device_type) if subsystem == "usb" else None


class PipeMonitor:
    """pyudev.Monitor's fileno()/poll() contract over a pipe: each queued event makes the fd readable."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self._devices: deque = deque()
        self.broken = False

    def fileno(self) -> int:
        return self._read

    def emit(self, device) -> None:
        self._devices.append(device)
        os.write(self._write, b"!")

    def poll(self, timeout=None):
        if self.broken:
            raise OSError("netlink socket closed")
        try:
            os.read(self._read, 1)
        except BlockingIOError:
            return None
        return self._devices.popleft()

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


def rm520n(action: str, node: str, interface: str = "02", **kwargs) -> FakeUdevDevice:
    return FakeUdevDevice(action, node, vendor="2c7c", product="0801", interface=interface, **kwargs)


def test_rm520n_at_port_is_found_by_usb_ids_and_interface_number():
    port = identify_at_port(rm520n("add", "/dev/ttyUSB2"))
    assert port == ModemPort("Quectel RM520N", "2c7c", "0801", 2, "/dev/ttyUSB2", port.sys_path)


def test_at_port_is_found_from_sysfs_parents_when_udev_gave_no_usb_properties():
    device = rm520n("add", "/dev/ttyUSB7", with_properties=False)
    assert "ID_USB_INTERFACE_NUM" not in device.properties
    assert identify_at_port(device).device_node == "/dev/ttyUSB7"


@pytest.mark.parametrize("profile", KNOWN_MODEMS, ids=lambda p: p.model)
def test_only_the_at_interface_of_each_known_modem_matches(profile):
    for interface in range(6):
        device = FakeUdevDevice(
            "add", f"/dev/ttyUSB{interface}", vendor=profile.vendor_id, product=profile.product_id, interface=f"{interface:02x}"
        )
        port = identify_at_port(device)
        if interface == profile.at_interface:
            assert port is not None and port.model == profile.model
        else:
            assert port is None, f"interface {interface} of {profile.model} is not its AT port"


@pytest.mark.parametrize(
    "device",
    [
        FakeUdevDevice("add", "/dev/ttyUSB2", vendor="1199", product="9071", interface="02"),  # a Sierra modem
        FakeUdevDevice("add", "/dev/ttyUSB2", vendor="2c7c", product="0801", interface="02", subsystem="usb"),
        FakeUdevDevice("add", None, vendor="2c7c", product="0801", interface="02"),
        FakeUdevDevice("add", "/dev/ttyS0"),  # an on-board UART: no USB parents at all
        FakeUdevDevice("add", "/dev/ttyUSB2", vendor="2c7c", product="0801", interface="zz"),
    ],
    ids=["other-vendor", "not-a-tty", "no-device-node", "no-usb-parent", "garbled-interface"],
)
def test_devices_that_are_not_a_known_modems_at_port_are_ignored(device):
    assert identify_at_port(device) is None


def test_a_real_pyudev_device_that_is_not_a_modem_is_ignored():
    context = pyudev.Context()
    ptmx = pyudev.Devices.from_sys_path(context, "/sys/devices/virtual/tty/ptmx")
    assert ptmx.subsystem == "tty" and ptmx.device_node == "/dev/ptmx"
    assert identify_at_port(ptmx) is None


def test_scanning_this_hosts_real_ttys_reports_only_known_modems():
    context = pyudev.Context()
    ttys = list(context.list_devices(subsystem="tty"))
    assert ttys, "this host has no ttys in sysfs"
    known = {(p.vendor_id, p.product_id, p.at_interface) for p in KNOWN_MODEMS}
    for port in ModemPortWatcher(context=context).scan():
        assert (port.vendor_id, port.product_id, port.interface) in known


def test_modem_that_drops_off_the_bus_and_returns_is_reported_remove_then_add():
    monitor = PipeMonitor()
    watcher = ModemPortWatcher(monitor=monitor)
    heard: list[HotplugEvent] = []
    watcher.subscribe(heard.append)

    async def scenario() -> list[HotplugEvent]:
        events = watcher.events()
        monitor.emit(rm520n("add", "/dev/ttyUSB2"))
        monitor.emit(rm520n("add", "/dev/ttyUSB1", interface="01"))  # its NMEA port: not ours
        monitor.emit(rm520n("change", "/dev/ttyUSB2"))
        first = await asyncio.wait_for(anext(events), 5)
        # The modem reboots (AT+CFUN=1,1): udev's remove carries no USB properties...
        monitor.emit(rm520n("remove", "/dev/ttyUSB2", with_properties=False))
        second = await asyncio.wait_for(anext(events), 5)
        # ...and it comes back enumerated under another number.
        monitor.emit(rm520n("add", "/dev/ttyUSB5"))
        third = await asyncio.wait_for(anext(events), 5)
        await events.aclose()
        return [first, second, third]

    try:
        first, second, third = asyncio.run(scenario())
    finally:
        monitor.close()
    assert (first.action, first.port.device_node) == ("add", "/dev/ttyUSB2")
    assert (second.action, second.port) == ("remove", first.port)
    assert (third.action, third.port.device_node) == ("add", "/dev/ttyUSB5")
    assert heard == [first, second, third]
    assert watcher.present == [third.port]


def test_a_port_found_by_scan_is_not_announced_twice_when_its_add_event_arrives():
    class Context:
        def list_devices(self, subsystem):
            assert subsystem == "tty"
            return [rm520n("add", "/dev/ttyUSB2"), FakeUdevDevice("add", "/dev/ttyS0")]

    watcher = ModemPortWatcher(context=Context(), monitor=PipeMonitor())
    [port] = watcher.scan()
    assert port.device_node == "/dev/ttyUSB2"
    assert watcher.handle(rm520n("add", "/dev/ttyUSB2")) is None
    assert watcher.handle(rm520n("remove", "/dev/ttyUSB2")) == HotplugEvent("remove", port)
    assert watcher.handle(rm520n("remove", "/dev/ttyUSB2", with_properties=False)) is None  # already gone


def test_a_failing_listener_does_not_stop_the_event():
    watcher = ModemPortWatcher(monitor=PipeMonitor())
    heard = []
    watcher.subscribe(lambda event: 1 / 0)
    watcher.subscribe(heard.append)
    event = watcher.handle(rm520n("add", "/dev/ttyUSB2"))
    assert heard == [event]


def test_a_broken_udev_socket_ends_the_event_stream_with_a_hotplug_error():
    monitor = PipeMonitor()
    watcher = ModemPortWatcher(monitor=monitor)

    async def scenario() -> None:
        events = watcher.events()
        monitor.broken = True
        monitor.emit(rm520n("add", "/dev/ttyUSB2"))
        await asyncio.wait_for(anext(events), 5)

    try:
        with pytest.raises(HotplugError, match="udev events") as caught:
            asyncio.run(scenario())
    finally:
        monitor.close()
    assert isinstance(caught.value, OSError) and isinstance(caught.value, DriverError)
    assert isinstance(caught.value.__cause__, OSError)


def test_a_profile_must_use_lsusb_style_ids():
    with pytest.raises(ValueError, match="lowercase hex"):
        ModemUsbProfile("x", "2C7C", "0801", 2)
    assert ModemPortWatcher(modems=[ModemUsbProfile("RM520N in RNDIS mode", "2c7c", "0801", 4)]).modems[0].at_interface == 4


text = st.text(max_size=8)


@settings(max_examples=1000)
@given(
    properties=st.dictionaries(st.sampled_from(["ID_VENDOR_ID", "ID_MODEL_ID", "ID_USB_INTERFACE_NUM", "DEVNAME"]), text),
    vendor=st.one_of(st.none(), text),
    product=st.one_of(st.none(), text),
    interface=st.one_of(st.none(), text),
    action=st.sampled_from(["add", "remove", "change", "bind", None]),
)
def test_any_udev_properties_give_a_known_port_or_none(properties, vendor, product, interface, action):
    device = FakeUdevDevice(action, "/dev/ttyUSB9", vendor=vendor, product=product or "", interface=interface or "0")
    device.properties = properties
    port = identify_at_port(device)
    known = {(p.vendor_id, p.product_id, p.at_interface) for p in KNOWN_MODEMS}
    assert port is None or (port.vendor_id, port.product_id, port.interface) in known
    ModemPortWatcher().handle(device)  # never raises either
