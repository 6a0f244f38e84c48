"""The provisioning package's one exception tree.

Every error the technician's tooling raises derives from `ProvisioningError`;
leaves also subclass the matching builtin (`FileNotFoundError`,
`PermissionError`, `TimeoutError`, ...) so callers that only know the builtin
still catch them. Each message is one line that says what went wrong, with
which input, and what to do about it: the CLI prints it as it is. Add new
leaves here, never elsewhere.
"""
from __future__ import annotations


class ProvisioningError(Exception):
    """Base of every error raised by `provisioning`."""


# --- serial ports (provisioning.serialport) ----------------------------------

class PortError(ProvisioningError, OSError):
    """A serial port cannot be used."""


class PortNotFoundError(PortError, FileNotFoundError):
    """No device at that path: unplugged, another name, or a typo."""


class PortBusyError(PortError, BlockingIOError):
    """Another process holds the port (ModemManager, a serial console, a second provisioning run)."""


class PortPermissionError(PortError, PermissionError):
    """The user may not open the port (not in the dialout group)."""


# --- the MicroPython raw REPL (provisioning.rawrepl, provisioning.flash) ------

class RawReplError(ProvisioningError):
    """Talking to a MicroPython board over its raw REPL failed."""


class NoRawReplError(RawReplError, TimeoutError):
    """The device on the port does not answer the raw REPL (not MicroPython, busy, or wrong port)."""


class NodeLockedError(NoRawReplError):
    """The node's firmware locked its USB REPL (firmware/src/lib/lock.py): erase it and provision a new identity."""


class DeviceCodeError(RawReplError, RuntimeError):
    """Code sent to the board raised an exception there; `device_traceback` holds the board's traceback."""

    def __init__(self, message: str, device_traceback: str = "") -> None:
        super().__init__(message)
        self.device_traceback = device_traceback


class FlashVerifyError(RawReplError, ValueError):
    """A file read back from the board does not have the SHA-256 of what was written."""


class FirmwareError(ProvisioningError, ValueError):
    """The firmware to flash cannot be prepared: a missing source folder, an mpy-cross failure."""


# --- identity, config and files on the gateway (provisioning.gateway, .install) ---

class SetupError(ProvisioningError, ValueError):
    """The provisioning request itself is wrong: a bad device id, a bad asset file, a bad option."""


class InstallError(ProvisioningError, OSError):
    """A file could not be written where it belongs (config, state, systemd unit, udev rule)."""


class IdentityExistsError(ProvisioningError, FileExistsError):
    """The device already has an identity that differs from what was asked; rotation must be explicit."""


class ModemReadError(ProvisioningError, OSError):
    """The modem did not tell us its IMEI, ICCID or model."""


# --- technicians and enrollment (provisioning.technician, .enrollment) -------

class TechnicianError(ProvisioningError, ValueError):
    """The technician's profile or key is missing or wrong."""


class DeviceEnrollmentError(ProvisioningError):
    """The device is not enrolled: the lender did not enroll it, or its answer cannot be installed on it."""


class LenderUnreachableError(DeviceEnrollmentError, ConnectionError):
    """No answer from the lender; the request is kept for `pledgewatch provision submit`."""


class EnrollmentRejectedError(DeviceEnrollmentError, PermissionError):
    """The lender answered and refused the enrollment (bad signature, unknown technician, id taken)."""


class EnrollmentResponseError(DeviceEnrollmentError, ValueError):
    """The lender's answer is not a valid enrollment response: bad signature, wrong request, undecryptable."""


class EnrollmentFileError(DeviceEnrollmentError, ValueError):
    """A saved enrollment request or response file cannot be read as one."""


# --- pre-flight (provisioning.check) -----------------------------------------

class CheckError(ProvisioningError, RuntimeError):
    """The pre-flight could not run at all (as opposed to a check that ran and failed)."""
