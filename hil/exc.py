"""The rig's one exception tree.

Every error `hil` raises (outside the simulators in `hil.sim`, which keep
theirs) derives from `HilError`; leaves also subclass the matching builtin so
callers that only know the builtin still catch them. An `InvariantViolation`
is an `AssertionError`: pytest reports it as a failed scenario, with the
message naming the lost seqs.
"""
from __future__ import annotations


class HilError(Exception):
    """Base of every error raised by the rig."""


class EnvFileError(HilError, ValueError):
    """An environment file that cannot be used; the message names the file, table and key."""


class ImpairmentError(HilError, ValueError):
    """A network impairment outside its allowed range (a probability above 1, a negative delay)."""


class NetemError(HilError, OSError):
    """The UDP proxy cannot run (cannot bind its port, not started)."""


class BenchError(HilError, RuntimeError):
    """A part of the bench did not start, stop or answer as it must (the message names the part and shows its output)."""


class FaultError(HilError, RuntimeError):
    """A fault cannot be injected or undone on this bench (the message says which and why)."""


class InvariantViolation(HilError, AssertionError):
    """The end-of-scenario check at the lender failed: readings lost, stored twice, or a chain that does not verify."""
