"""The durable package's one exception tree.

Every error `durable` raises derives from `DurableError`; leaves also subclass
the matching builtin (`FileExistsError`, `PermissionError`, `ValueError`, ...)
so callers that only know the builtin still catch them. Packages that present
these errors under their own names (``lender.exc``) subclass these leaves.
"""
from __future__ import annotations


class DurableError(Exception):
    """Base of every error raised by `durable`."""


# --- private key files (durable.keyfile) -----------------------------------

class KeyFileError(DurableError):
    """A private key file cannot be created or loaded."""


class KeyFileMissingError(KeyFileError, FileNotFoundError):
    """The key file does not exist (the device or technician was not set up yet)."""


class KeyFileExistsError(KeyFileError, FileExistsError):
    """A key file exists already where a new one was to be created; keep it, or rotate explicitly."""


class KeyFilePermissionError(KeyFileError, PermissionError):
    """A private key file is readable by group or others (it must be mode 0600)."""


class KeyFileInvalidError(KeyFileError, ValueError):
    """The key file is a symlink, not a regular file, or not exactly 32 bytes long."""


class KeyFileUnavailableError(KeyFileError, OSError):
    """The key file cannot be opened, or a new one cannot be written (permissions of the directory, disk full)."""


# --- where a device's signing key lives (durable.keystore) --------------------

class KeyStoreError(DurableError):
    """A device key store cannot be opened, or its key cannot be created or used."""


class KeyStoreConfigError(KeyStoreError, ValueError):
    """The key store description is unusable: an unknown kind, a bad TCTI string or persistent handle."""


class TpmUnavailableError(KeyStoreError, OSError):
    """No TPM answers: no /dev/tpmrm0 or /dev/tpm0, the TCTI cannot connect, or tpm2-pytss is not installed."""


class TpmRefusedError(KeyStoreError, PermissionError):
    """The TPM refuses: it is in dictionary-attack lockout, or the owner hierarchy has a password set."""


class TpmKeyMismatchError(KeyStoreError, ValueError):
    """The TPM's key at the handle is not the key this gateway was provisioned with (another TPM, a replaced key)."""


# --- OSCORE security contexts on disk (durable.oscore) ------------------------

class OscoreContextError(DurableError):
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
    algorithm, a short master secret, a missing file, unreadable JSON, or
    aiocoap refused to load the directory."""


class OscoreContextInUseError(OscoreContextError, OSError):
    """Another process (or another object in this one) holds the context's
    lock: two users of one context would reuse sequence numbers."""
