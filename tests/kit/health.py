"""Test kit for the modem health monitor: a virtual clock and udev events made by pyudev.

* `VirtualClock` — monotonic seconds that move only when the test advances
  them: `sleep()` parks the caller until `next_wakeup()` jumps to its
  deadline, so a simulated day of probes runs as fast as the pty answers.
* `udev_event()` — a real `pyudev.Device`, built by pyudev from udev's event
  environment (`pyudev.Devices.from_environment`, what udev hands a RUN
  program), and `UdevFeed`, a monitor with pyudev.Monitor's fileno()/poll()
  contract that delivers them to `drivers.hotplug.ModemPortWatcher`.
"""
from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import os
from collections import deque
from contextlib import contextmanager

import pyudev

EPOCH = 1_767_571_200.0  # wall time at virtual monotonic 0 (2026-01-05T00:00:00Z)


class VirtualClock:
    """Monotonic time under the test's control; `wall()` is EPOCH + now."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._parked: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    def _event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._parked is None or self._loop is not loop:  # a clock may outlive one asyncio.run()
            self._parked, self._loop = asyncio.Event(), loop
        return self._parked

    async def sleep(self, delay: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.now + max(0.0, delay), next(self._order), fut)
        heapq.heappush(self._sleepers, entry)
        self._event().set()
        try:
            await fut
        finally:
            if entry in self._sleepers:  # cancelled (woken early): it no longer waits
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    def next_deadline(self) -> float | None:
        """When the earliest sleeper wakes, or None when nobody sleeps."""
        return min(self._sleepers)[0] if self._sleepers else None

    async def parked(self, timeout: float = 30.0) -> None:
        """Wait (real time) until someone sleeps on this clock."""
        async with asyncio.timeout(timeout):
            while not self._sleepers:
                self._event().clear()
                await self._event().wait()

    async def next_wakeup(self, timeout: float = 30.0) -> float:
        """Wait until someone sleeps, jump to the earliest deadline, wake that sleeper and wait until it sleeps again."""
        await self.parked(timeout)
        deadline, _, fut = heapq.heappop(self._sleepers)
        self.now = max(self.now, deadline)
        fut.set_result(None)
        await asyncio.sleep(0)
        await self.parked(timeout)
        return self.now


_libc = ctypes.CDLL(None, use_errno=True)


def _set_c_environment(env: dict[str, str]) -> None:
    _libc.clearenv()
    for key, value in env.items():
        _libc.setenv(os.fsencode(key), os.fsencode(value), 1)


async def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `condition()` in real time until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.01)


@contextmanager
def _udev_environment(env: dict[str, str]):
    """The process environment is udev's event for a moment (libudev reads the C `environ`).

    libudev splits the strings at their '=' in place, so the environment is
    rebuilt with clearenv()/setenv() afterwards instead of unsetenv(); Python's
    os.environ mapping is never touched.
    """
    _set_c_environment(env)
    try:
        yield
    finally:
        _set_c_environment(dict(os.environ))


_seqnum = itertools.count(9000)


def udev_event(action: str, node: str, *, vendor: str = "2c7c", product: str = "0801", interface: str = "02",
               with_usb_properties: bool = True) -> pyudev.Device:
    """The `pyudev.Device` udev delivers for a USB tty `action` (add/remove) of a modem's interface."""
    name = node.rsplit("/", 1)[-1]
    env = {
        "ACTION": action, "SUBSYSTEM": "tty", "SEQNUM": str(next(_seqnum)), "DEVNAME": node,
        "DEVPATH": f"/devices/platform/soc/usb1/1-1/1-1:1.{int(interface, 16)}/{name}/tty/{name}",
    }
    if with_usb_properties:
        env |= {"ID_VENDOR_ID": vendor, "ID_MODEL_ID": product, "ID_USB_INTERFACE_NUM": interface,
                "DEVLINKS": "/dev/pledgewatch-modem-at"}
    with _udev_environment(env):
        return pyudev.Devices.from_environment(pyudev.Context())


class UdevFeed:
    """pyudev.Monitor's fileno()/poll() contract over a pipe: `emit` queues a device and makes the fd readable."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        self._devices: deque[pyudev.Device] = deque()

    def fileno(self) -> int:
        return self._read

    def emit(self, device: pyudev.Device) -> None:
        self._devices.append(device)
        os.write(self._write, b"!")

    def poll(self, timeout: float | None = None) -> pyudev.Device | None:
        try:
            os.read(self._read, 1)
        except BlockingIOError:
            return None
        return self._devices.popleft()

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


def values(envelopes, name: str) -> list:
    """The value (string, number or boolean) of every record named `name`, in chain order."""
    out = []
    for envelope in envelopes:
        for r in envelope.records:
            if r.name == name:
                out.append(next(v for v in (r.string, r.value, r.boolean) if v is not None))
    return out
