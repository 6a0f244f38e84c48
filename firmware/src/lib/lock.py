"""The node's USB REPL lock: once provisioning writes ``node.locked`` (its last step), the REPL never comes back.

boot.py calls `hold` at every start. Without the marker it returns at once
(one ``os.stat``), and the node boots as before. With it, it never returns:

* ``micropython.kbd_intr(-1)``: Ctrl-C is an ordinary byte, no longer a
  KeyboardInterrupt, so ``mpremote``, ``pyboard.py`` or our own raw-REPL
  client cannot break into a prompt; Ctrl-A and Ctrl-D are bytes nobody
  reads;
* terminals attached with ``os.dupterm`` (a WebREPL, a UART) are detached,
  on ports that have it. On ESP32 and RP2040 the USB REPL is the port's own
  console, not a dupterm slot: there the lock *is* this loop;
* the node's program runs from here, inside a loop that catches everything
  (``KeyboardInterrupt`` and ``SystemExit`` included), so no failure ends in
  the REPL. boot.py runs before the raw REPL too (a soft reset in the raw
  REPL runs boot.py, not main.py), which is why the lock lives here and not
  in main.py.

A locked node prints `LOCKED` at every start and every second after a failed cycle,
which is how ``provision node`` tells a locked node from a silent board. To
provision it again: erase its flash, install MicroPython, and provision it as
a new node with a new key (docs/firmware.md): its old key is never read.

What this does not protect (docs/firmware.md): the flash read out with a
probe or esptool, unless the chip encrypts it (ESP32 flash encryption);
RP2040 has no secure storage at all.
"""

import os
import time

import micropython

MARKER = "node.locked"
LOCKED = "pledgewatch: node locked, USB REPL disabled; to re-provision: erase the flash, new identity"
RETRY_S = 30  # a failed cycle is tried again after this; the line is said every second meanwhile


def locked():
    """Whether provisioning locked this node (the marker file exists)."""
    try:
        os.stat(MARKER)
    except OSError:
        return False
    return True


def _detach():
    dupterm = getattr(os, "dupterm", None)
    if dupterm is None:
        return
    for slot in range(2):
        try:
            dupterm(None, slot)
        except (OSError, ValueError, TypeError):
            pass


def hold(run):
    """Never return if the node is locked: disable Ctrl-C, detach extra terminals, run `run()` forever."""
    if not locked():
        return
    micropython.kbd_intr(-1)
    _detach()
    print(LOCKED)
    while True:
        try:
            run()  # the node's cycle: on a board it ends in deep sleep, i.e. a fresh boot
        except BaseException:  # KeyboardInterrupt, SystemExit, any failure: never the REPL
            pass
        for _ in range(RETRY_S):
            print(LOCKED)
            time.sleep(1)
