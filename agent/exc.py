"""The agent package's one exception tree.

Every error the gateway agent raises derives from `AgentError`; leaves also
subclass the matching builtin (`ValueError`, `OSError`, ...) so callers that
only know the builtin still catch them. Add new leaves here, never elsewhere.
"""
from __future__ import annotations


class AgentError(Exception):
    """Base of every error raised by `agent`."""


# --- the durable spool (agent.spool) -------------------------------------

class SpoolError(AgentError):
    """Something went wrong with the durable spool."""


class SpoolUnavailableError(SpoolError, OSError):
    """The spool file cannot be opened or written at all: its directory is
    missing or read-only, the disk is full, or another process holds it."""


class SpoolCorruptError(SpoolError, OSError):
    """SQLite reported a damaged spool database while the agent was running.
    Re-opening the spool (`Spool.open`) moves the damaged file aside."""


class SpoolSequenceError(SpoolError, ValueError):
    """An envelope was appended whose seq is not above the spool's chain head
    (a seq would be reused or go backwards)."""


# --- the agent's small state documents (agent.state) ----------------------

class StateError(AgentError):
    """Something went wrong with the agent's state file."""


class StateUnavailableError(StateError, OSError):
    """The state file cannot be read or written (permissions, disk full)."""


class StateValueError(StateError, ValueError):
    """A state update would make a never-decreasing counter go backwards, or a
    value has the wrong type."""
