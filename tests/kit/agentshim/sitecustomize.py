"""The test shim of a child agent: what the borrower (or the test) controls outside the agent's code.

Loaded at start-up by a `python -m pledgewatch agent run` that a test starts
with this folder first on PYTHONPATH (tests.kit.pledged_site does). Each part
acts only when its variable is set:

* ``PLEDGEWATCH_TEST_PINS_FILE``: gpiozero's `MockFactory` becomes the pin
  factory, and a thread mirrors the file's lines (``17 high`` / ``17 low``)
  onto the mock pins, so a test opens a door contact in another process;
* ``PLEDGEWATCH_TEST_KERNEL_SYNCED=1``: the kernel says its clock is
  synchronized (what a borrower's LAN NTP server, or root clearing
  STA_UNSYNC, makes it say), whatever adjtimex(2) answers on the test host;
* ``PLEDGEWATCH_HIL_CLOCK_OFFSET_FILE``: the HIL rig's clock shim
  (hil/clockshim: `time.time()` moved by the offset in that file).

Never installed with the product.
"""
import os
import runpy
import threading
import time
from pathlib import Path

_PINS_FILE = os.environ.get("PLEDGEWATCH_TEST_PINS_FILE")
_CLOCK_SHIM = Path(__file__).resolve().parents[3] / "hil" / "clockshim" / "sitecustomize.py"

if os.environ.get("PLEDGEWATCH_HIL_CLOCK_OFFSET_FILE"):
    runpy.run_path(str(_CLOCK_SHIM))  # only one sitecustomize loads: run the rig's clock shim from this one

if os.environ.get("PLEDGEWATCH_TEST_KERNEL_SYNCED") == "1":
    import agent.clock

    agent.clock.TrustedClock.__init__.__kwdefaults__["kernel_synced"] = lambda: True

if _PINS_FILE:
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    _factory = MockFactory()
    Device.pin_factory = _factory

    def _mirror_pins() -> None:
        seen = None
        while True:
            try:
                text = Path(_PINS_FILE).read_text("ascii")
            except OSError:
                text = ""
            if text != seen:
                seen = text
                for line in text.splitlines():
                    pin, _, level = line.partition(" ")
                    mock = _factory.pin(int(pin))
                    mock.drive_high() if level.strip() == "high" else mock.drive_low()
            time.sleep(0.02)

    threading.Thread(target=_mirror_pins, name="test pins", daemon=True).start()
