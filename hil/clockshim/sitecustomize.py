"""The rig's clock shim: loaded at start-up by an agent the rig runs with this folder first on PYTHONPATH.

When PLEDGEWATCH_HIL_CLOCK_OFFSET_FILE names a file, `time.time()` and
`time.time_ns()` return the real wall clock plus the offset (seconds, a
float) written in that file, re-read whenever the file changes. Monotonic
clocks are untouched, as on a gateway whose RTC or NTP jumps. Nothing
happens without the variable. Never installed with the product: only
`hil.faults.ClockJump` puts it on a path.
"""
import os
import time

_OFFSET_FILE = os.environ.get("PLEDGEWATCH_HIL_CLOCK_OFFSET_FILE")

if _OFFSET_FILE:
    _real_time, _real_time_ns = time.time, time.time_ns
    _seen = [None, 0.0]  # (mtime_ns, size) of the file last read, offset

    def _offset() -> float:
        try:
            info = os.stat(_OFFSET_FILE)
        except OSError:
            return _seen[1]
        key = (info.st_mtime_ns, info.st_size, info.st_ino)
        if key != _seen[0]:
            try:
                with open(_OFFSET_FILE, encoding="ascii") as handle:
                    _seen[1] = float(handle.read().strip() or 0.0)
                _seen[0] = key
            except (OSError, ValueError):
                pass
        return _seen[1]

    def _shifted_time() -> float:
        return _real_time() + _offset()

    def _shifted_time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1e9)

    time.time = _shifted_time
    time.time_ns = _shifted_time_ns
