"""sd_notify: telling systemd (a ``Type=notify`` unit) that the daemon is ready, alive or stopping.

systemd passes the address of a datagram socket in ``NOTIFY_SOCKET`` (a path,
or an abstract socket when it starts with ``@``); each notification is one
datagram such as ``READY=1``, ``WATCHDOG=1`` or ``STOPPING=1``.
"""
from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send `state` to systemd; False (and nothing sent) when not run by systemd with ``NOTIFY_SOCKET``.

    Raises OSError when the socket refuses the datagram: whether that is worth
    a log line is the caller's choice (a watchdog ping every few seconds is not).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(state.encode(), address)
    return True
