"""Opening a serial port for the technician, and saying in one line why it cannot be opened.

The three ways a port fails on site each get their own error and their own
advice: the path does not exist (`PortNotFoundError`, with the ports that do
exist), another process holds it (`PortBusyError`, naming that process, found
by scanning ``/proc/*/fd`` like ``fuser``), or the user may not open it
(`PortPermissionError`, naming the group that owns it: ``dialout`` on
Debian). A port is opened with pyserial's exclusive lock (``flock``); a
process that holds the port without a lock (ModemManager probing it, a
``screen`` session) is found by the same scan and also counts as busy,
because it would steal bytes from us.
"""
from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

import serial
import serial.tools.list_ports

from provisioning.exc import PortBusyError, PortError, PortNotFoundError, PortPermissionError


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that has a port open."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


def _error(cls: type[PortError], code: int, message: str) -> PortError:
    error = cls(message)  # one argument: str() is the message alone, no "[Errno n]" prefix
    error.errno = code
    return error


def _command_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        raw = b""
    text = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    if not text:
        try:
            text = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            text = "?"
    return text if len(text) <= 80 else text[:77] + "..."


def holders(path: str | os.PathLike) -> list[Holder]:
    """Processes other than this one that have the device at `path` open (those we may inspect)."""
    try:
        target = os.stat(path)
    except OSError:
        return []
    if not stat.S_ISCHR(target.st_mode):
        return []
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
        except OSError:
            continue  # gone, or not ours to inspect
        with fds:
            for fd in fds:
                try:
                    info = os.stat(fd.path)
                except OSError:
                    continue
                if stat.S_ISCHR(info.st_mode) and info.st_rdev == target.st_rdev:
                    found.append(Holder(int(entry.name), _command_of(int(entry.name))))
                    break
    return found


def present_ports() -> list[str]:
    """The serial ports this machine has now (USB adapters first), for "did you mean" messages."""
    ports = sorted(p.device for p in serial.tools.list_ports.comports())
    by_id = Path("/dev/serial/by-id")
    if by_id.is_dir():
        ports = sorted(str(p) for p in by_id.iterdir()) + ports
    return ports


def _busy(path: str, found: list[Holder]) -> PortBusyError:
    if found:
        who = ", ".join(str(h) for h in found[:3])
        advice = "stop it (for ModemManager: sudo systemctl stop ModemManager) and try again"
        return _error(PortBusyError, errno.EBUSY, f"serial port {path} is busy: held by {who}; {advice}")
    return _error(PortBusyError, errno.EBUSY, f"serial port {path} is busy: another process has it locked (run as root to see which, "
        f"or: sudo fuser -v {path}); close that program and try again",
    )


def _permission(path: str) -> PortPermissionError:
    try:
        info = os.stat(path)
        group = grp.getgrgid(info.st_gid).gr_name
    except (OSError, KeyError):
        group = "dialout"
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = "$USER"
    return _error(PortPermissionError, errno.EACCES, f"permission denied opening {path} (owned by group '{group}'): add your user to that group with "
        f"`sudo usermod -aG {group} {user}`, then log out and in again",
    )


def diagnose(path: str, exc: BaseException) -> PortError:
    """The technician-facing error for an `OSError` / `SerialException` raised while opening `path`."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOENT, errno.ENXIO, errno.ENODEV, errno.ENOTDIR) or not os.path.exists(path):
        ports = present_ports()
        hint = f"ports present: {', '.join(ports[:6])}" if ports else "no serial ports are present at all"
        return _error(PortNotFoundError, errno.ENOENT, f"no serial port {path}: is the device plugged in and powered? {hint}")
    if code in (errno.EACCES, errno.EPERM):
        return _permission(path)
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        return _busy(path, holders(path))
    return _error(PortError, code or errno.EIO, f"cannot open serial port {path}: {exc}")


def open_port(path: str | os.PathLike, *, baudrate: int = 115200, timeout: float = 0.1,
              check_holders: bool = True) -> serial.Serial:
    """Open `path` exclusively with pyserial, or raise the technician-facing `PortError`."""
    path = os.fspath(path)
    try:
        port = serial.Serial(path, baudrate, timeout=timeout, write_timeout=5.0, exclusive=True)
    except (serial.SerialException, OSError) as exc:
        raise diagnose(path, exc) from exc
    if check_holders:
        found = holders(path)
        if found:
            port.close()
            raise _busy(path, found)
    return port


def check_port(path: str | os.PathLike) -> None:
    """Raise the technician-facing `PortError` unless `path` could be opened exclusively right now."""
    open_port(path).close()
