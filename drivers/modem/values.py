"""Typed values the modem drivers return: frozen dataclasses and enums, no strings to re-parse.

Units are in the field names (``rsrp_dbm``, ``sinr_db``); a value the modem
reports as unknown or not applicable is None, never a sentinel like 99 or 255.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum, IntEnum


class RegistrationStatus(IntEnum):
    """<stat> of +CREG/+CEREG/+C5GREG, 3GPP TS 27.007 §10.1.22."""

    NOT_REGISTERED = 0
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5
    HOME_SMS_ONLY = 6
    ROAMING_SMS_ONLY = 7
    EMERGENCY_ONLY = 8
    HOME_CSFB_NOT_PREFERRED = 9
    ROAMING_CSFB_NOT_PREFERRED = 10
    ROAMING_LOCAL_BREAKOUT = 11

    @property
    def registered(self) -> bool:
        return self in _REGISTERED


_REGISTERED = frozenset({RegistrationStatus.HOME, RegistrationStatus.ROAMING, RegistrationStatus.HOME_SMS_ONLY,
                         RegistrationStatus.ROAMING_SMS_ONLY, RegistrationStatus.HOME_CSFB_NOT_PREFERRED,
                         RegistrationStatus.ROAMING_CSFB_NOT_PREFERRED, RegistrationStatus.ROAMING_LOCAL_BREAKOUT})


class AccessTechnology(IntEnum):
    """<AcT> of +COPS/+CEREG/+C5GREG, 3GPP TS 27.007 §7.3."""

    GSM = 0
    GSM_COMPACT = 1
    UTRAN = 2
    GSM_EGPRS = 3
    UTRAN_HSDPA = 4
    UTRAN_HSUPA = 5
    UTRAN_HSPA = 6
    E_UTRAN = 7
    EC_GSM_IOT = 8
    E_UTRAN_NB_S1 = 9
    E_UTRA_5GCN = 10
    NR_5GCN = 11
    NG_RAN = 12
    E_UTRA_NR_DUAL = 13


class RadioMode(str, Enum):
    """What the modem is camped on, as its serving-cell command reports it."""

    LTE = "LTE"
    NR5G_SA = "NR5G-SA"
    NR5G_NSA = "NR5G-NSA"
    NO_SERVICE = "NO SERVICE"


class Functionality(IntEnum):
    """<fun> of +CFUN, 3GPP TS 27.007 §8.2 (the values drivers use)."""

    MINIMUM = 0
    FULL = 1
    DISABLE_TX = 2
    DISABLE_RX = 3
    FLIGHT = 4


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """Who made the modem and which one it is (from ATI / AT+CGMM)."""

    manufacturer: str
    model: str
    revision: str | None
    family: str  # "rm500q", "rm520n", "ec25", "sim7600", "sim8200", or "generic"


@dataclass(frozen=True, slots=True)
class SignalQuality:
    """AT+CSQ, 3GPP TS 27.007 §8.5."""

    rssi_dbm: int | None
    ber_class: int | None


@dataclass(frozen=True, slots=True)
class ExtendedSignalQuality:
    """AT+CESQ, 3GPP TS 27.007 §8.69: lower bound of each reported range."""

    rxlev_dbm: int | None
    ber_class: int | None
    rscp_dbm: int | None
    ecno_db: float | None
    rsrq_db: float | None
    rsrp_dbm: int | None


@dataclass(frozen=True, slots=True)
class Registration:
    """AT+CEREG? (EPS) or AT+C5GREG? (5GS): status and, when reported, where."""

    domain: str  # "EPS" or "5GS"
    status: RegistrationStatus
    tac: int | None = None
    cell_id: int | None = None
    act: AccessTechnology | None = None

    @property
    def registered(self) -> bool:
        return self.status.registered


@dataclass(frozen=True, slots=True)
class Operator:
    """AT+COPS?, 3GPP TS 27.007 §7.3. `name` is None when not registered."""

    mode: int
    name: str | None
    name_format: int | None
    act: AccessTechnology | None


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell the modem is using, in physical units."""

    rat: RadioMode
    mcc: str | None
    mnc: str | None
    cell_id: int | None
    pci: int | None
    tac: int | None
    band: int | None
    arfcn: int | None
    rsrp_dbm: float | None
    rsrq_db: float | None
    sinr_db: float | None
    rssi_dbm: float | None = None
    duplex: str | None = None


@dataclass(frozen=True, slots=True)
class ServingCell:
    """The serving cell(s): one for LTE or NR standalone, LTE anchor plus NR for EN-DC (NSA).

    `state` is the vendor's connection state (Quectel ``NOCONN``/``CONNECT``/
    ``SEARCH``/``LIMSRV``; SIMCom ``Online``/``Low Power Mode`` …); `cells`
    is empty when the modem is not camped on any cell.
    """

    mode: RadioMode
    state: str
    cells: tuple[Cell, ...]

    @property
    def primary(self) -> Cell | None:
        return self.cells[0] if self.cells else None

    @property
    def nr(self) -> Cell | None:
        return next((c for c in self.cells if c.rat in (RadioMode.NR5G_SA, RadioMode.NR5G_NSA)), None)


@dataclass(frozen=True, slots=True)
class NetworkInfo:
    """Quectel AT+QNWINFO: access technology, PLMN, band and channel; None fields when no service."""

    act: str | None
    plmn: str | None
    band: str | None
    channel: int | None

    @property
    def in_service(self) -> bool:
        return self.act is not None


@dataclass(frozen=True, slots=True)
class GnssFix:
    """A position from the modem's GNSS receiver (WGS-84)."""

    time: dt.datetime  # UTC
    latitude: float
    longitude: float
    altitude_m: float | None
    hdop: float | None
    satellites: int | None
    speed_kmh: float | None
    course_deg: float | None
    fix_dimension: int | None  # 2 or 3 when the receiver says so
