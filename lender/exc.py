"""The lender package's one exception tree.

Every error the lender raises derives from `LenderError`; leaves also subclass
the matching builtin (`ValueError`, `PermissionError`, ...) so callers that
only know the builtin still catch them. Add new leaves here, never elsewhere.
"""
from __future__ import annotations

from durable import exc as durable_exc


class LenderError(Exception):
    """Base of every error raised by `lender`."""


# --- OSCORE security contexts on disk (lender.enrollment.contexts, over durable.oscore) ---
# Each also subclasses durable's class of the same name, so an `except` for
# either name catches what the lender raises.

class OscoreContextError(LenderError, durable_exc.OscoreContextError):
    """An OSCORE security context cannot be created or loaded."""


class OscoreContextExistsError(OscoreContextError, durable_exc.OscoreContextExistsError):
    """A context directory already exists (see `durable.exc.OscoreContextExistsError`)."""


class OscoreContextPermissionError(OscoreContextError, durable_exc.OscoreContextPermissionError):
    """A context directory or one of its files can be read by group or others, or belongs to another user."""


class OscoreContextInvalidError(OscoreContextError, durable_exc.OscoreContextInvalidError):
    """Context parameters or files are malformed, or a device id is not a safe directory name."""


class OscoreContextInUseError(OscoreContextError, durable_exc.OscoreContextInUseError):
    """Another process (or another object in this one) holds the context's lock."""


# --- evidence storage (lender.evidence.store) ----------------------------------------

class StoreError(LenderError):
    """The lender's evidence store cannot be used."""


class StoreUnavailableError(StoreError, OSError):
    """The store's file or directory cannot be opened or written (missing,
    read-only, disk full, locked by another writer for too long)."""


class StoreFormatError(StoreError, ValueError):
    """The file is not a pledgewatch lender store, or one written by a newer
    version (its schema version is higher than this program knows)."""


# --- device registry (lender.evidence.registry) --------------------------------------

class RegistryError(LenderError):
    """A device cannot be registered, found or revoked."""


class InvalidDeviceError(RegistryError, ValueError):
    """A device id or public key given for registration is malformed."""


class DeviceExistsError(RegistryError, FileExistsError):
    """The device id, or its key id, is registered already (a key belongs to one device)."""


class UnknownDeviceError(RegistryError, LookupError):
    """No device with that id is registered."""


# --- lender server and tools (lender.server, lender.cli) ---------------------

class ServeError(LenderError, OSError):
    """The lender's CoAP server cannot start (address in use, bad bind address)."""


class ExportFormatError(LenderError, ValueError):
    """An export file or a keys file given to `lender verify` cannot be read as one."""


# --- enrollment and technicians (lender.enrollment) -------------------------------

class EnrollmentError(LenderError):
    """An enrollment request, a technician or an installation report cannot be accepted."""


class InvalidTechnicianError(EnrollmentError, ValueError):
    """A technician id or public key given for registration is malformed."""


class TechnicianExistsError(EnrollmentError, FileExistsError):
    """The technician id, or its key, is registered already."""


class UnknownTechnicianError(EnrollmentError, LookupError):
    """No technician with that id is registered."""


# --- the console (lender.console) ---

class ConsoleError(LenderError):
    """The web console could not do what was asked."""


class AccountError(ConsoleError, ValueError):
    """A staff account cannot be created or changed as asked (bad name, role or password)."""


class UnknownAccountError(ConsoleError, LookupError):
    """No staff account has that name."""


class WebhookError(ConsoleError, ValueError):
    """A webhook endpoint is not usable (a URL that is not http or https)."""
