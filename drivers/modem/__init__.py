"""drivers.modem — modem drivers that turn AT responses into typed values.

`open_modem(channel)` identifies the modem (ATI / AT+CGMM) and returns its
driver: `Modem` (generic 3GPP TS 27.007), `QuectelModem` (RM500Q, RM520N,
EC25) or `SimcomModem` (SIM7600, SIM8200). Values are in `values`.
"""
from drivers.modem.detect import identify, open_modem, parse_ati
from drivers.modem.generic import Modem
from drivers.modem.quectel import QuectelModem
from drivers.modem.simcom import SimcomModem
from drivers.modem.values import (
    AccessTechnology,
    Cell,
    ExtendedSignalQuality,
    Functionality,
    GnssFix,
    ModelIdentity,
    NetworkInfo,
    Operator,
    RadioMode,
    Registration,
    RegistrationStatus,
    ServingCell,
    SignalQuality,
)

__all__ = [
    "AccessTechnology", "Cell", "ExtendedSignalQuality", "Functionality", "GnssFix", "Modem", "ModelIdentity",
    "NetworkInfo", "Operator", "QuectelModem", "RadioMode", "Registration", "RegistrationStatus", "ServingCell",
    "SignalQuality", "SimcomModem", "identify", "open_modem", "parse_ati",
]
