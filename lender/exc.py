"""The lender package's one exception tree.

Every error the lender raises derives from `LenderError`; leaves also subclass
the matching builtin (`ValueError`, `PermissionError`, ...) so callers that
only know the builtin still catch them. Add new leaves here, never elsewhere.
"""
from __future__ import annotations


class LenderError(Exception):
    """Base of every error raised by `lender`."""


# --- OSCORE security contexts on disk (lender.oscore) ---------------------

class OscoreContextError(LenderError):
    """An OSCORE security context cannot be created or loaded."""


class OscoreContextExistsError(OscoreContextError, FileExistsError):
    """A context directory already exists. Writing a second context there would
    restart its sequence numbers under a key that may already have been used
    (nonce reuse); retire the old directory and enroll the device again."""


class OscoreContextPermissionError(OscoreContextError, PermissionError):
    """A context directory or one of its files can be read by group or others
    (directories must be 0700, files 0600), or belongs to another user."""


class OscoreContextInvalidError(OscoreContextError, ValueError):
    """Context parameters or files are malformed: an id too long for the
    algorithm, a short master secret, a device id that is not a safe name,
    unreadable JSON, or aiocoap refused to load the directory."""


class OscoreContextInUseError(OscoreContextError, OSError):
    """Another process (or another object in this one) holds the context's
    lock: two users of one context would reuse sequence numbers."""
