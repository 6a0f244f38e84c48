"""The drivers package's one exception tree.

Every error a driver raises derives from `DriverError`; leaves also subclass
the matching builtin (`TimeoutError`, `ValueError`, `OSError`) so callers that
only know the builtin still catch them. Add new leaves here, never elsewhere.
"""
from __future__ import annotations


class DriverError(Exception):
    """Base of every error raised by `drivers`."""
