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


class SpoolConfigError(SpoolError, ValueError):
    """`Spool.open` was given a setting it cannot honour (a bound that is not a
    positive integer, a synchronous level other than FULL or NORMAL)."""


class SpoolSequenceError(SpoolError, ValueError):
    """An envelope was appended whose seq is not above the spool's chain head
    (a seq would be reused or go backwards)."""


# --- the agent's small state documents (agent.state) ----------------------

class StateError(AgentError):
    """Something went wrong with the agent's state file."""


class StateUnavailableError(StateError, OSError):
    """The state file cannot be read or written (permissions, disk full)."""


class StateCorruptError(StateError, ValueError):
    """The state file is not what `agent.state` writes (bad JSON, checksum
    mismatch, wrong types). `AgentState.open` moves such a file aside."""


class StateValueError(StateError, ValueError):
    """A state update would make a never-decreasing counter go backwards, or a
    value has the wrong type."""


# --- the uplink to the lender (agent.uplink) -----------------------------

class UplinkError(AgentError):
    """Something went wrong between the agent and the lender's CoAP endpoint."""


class UplinkConfigError(UplinkError, ValueError):
    """The [uplink] settings are unusable: a non-coap lender URI, a bound that
    is not positive, or neither an OSCORE context nor an explicit
    `insecure = true`."""


class SecurityContextError(UplinkError, OSError):
    """The device's OSCORE security context cannot be loaded (missing files,
    unreadable JSON, or another process already uses it)."""


class SecurityContextPermissionError(SecurityContextError, PermissionError):
    """The OSCORE context directory or a file in it can be read by group or
    others (it must be 0700 with 0600 files, owned by the agent's user)."""


class DatagramAnswerError(UplinkError, ValueError):
    """An answer to one datagram attempt (agent.datagram) is unusable: it does
    not unprotect under the device's OSCORE context (an unprotected 4.01
    "Replay detected", a forgery), or its Block2 continuation does not fit.
    The attempt counts as unanswered."""


# --- configuration (agent.config) ------------------------------------------

class ConfigError(AgentError, ValueError):
    """The agent's config file is missing, not TOML, or breaks a rule; the
    message names the file, the key and what is allowed."""


# --- the modem health monitor (agent.health) -------------------------------

class ModemHealthConfigError(AgentError, ValueError):
    """A [modem] setting is unusable: an unknown model, a bound that is not
    positive, a reset cap below 1; the message names the key."""
