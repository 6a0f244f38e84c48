"""What every phase of the node's cycle shares: the log line, the RTC as unix time, and forgetting a phase's modules."""

import gc
import sys
import time

CLOCK_VALID_AFTER = 1704067200  # 2024-01-01: an RTC before this has lost its time
EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0  # ports counting from 2000


def release(*names):
    """Forget modules the rest of the cycle does not need, so their code goes back to the heap.

    The cycle imports each phase's modules when the phase starts (sampling and
    the sensors, then signing, then delivery: the modem, CoAP and OSCORE) and
    releases them after: the node needs the heap of its largest phase, not of
    all of them (an ESP32 without PSRAM leaves MicroPython ~110 KB).
    """
    for name in names:
        sys.modules.pop(name, None)
    gc.collect()


def log(text):
    print("node: " + text, file=sys.stderr)


def unix_time():
    """The RTC as unix seconds, or None when it has not been set since power was lost."""
    now = int(time.time()) + EPOCH_OFFSET
    return now if now >= CLOCK_VALID_AFTER else None
