"""What the modem drivers need only now and then: setting a module up after power-on, resetting a hung one, the network clock.

A node wakes from deep sleep far more often than it powers on: most wakes
find the module set up (the profile in state/modem.json), answering, and the
RTC set. So this code is not part of `cellular` and `quectel`, whose code
stays loaded through the send phase, the cycle's heap peak: the driver
methods (`Cellular.reset`, `Cellular.network_time`, `Bc66.setup`) and
delivery (setting the RTC) import it when they are called and release it when
they return (runtime.release), so the exchanges that follow have its space
back. Behaviour is the drivers',
documented there.
"""

import time

import machine

from cellular import Cellular, fields, quoted
from errors import CommandError, ModemError, ModemGarbage, ModemTimeout
from runtime import EPOCH_OFFSET


# --- Cellular ---

def reset(modem):
    """Pulse the reset line, wait for the boot URC (or the boot time), and sync again."""
    if modem.reset_pin is None:
        raise ModemTimeout("the modem is hung and this node has no reset line configured")
    modem.resets += 1
    modem.reset_pin.value(modem.reset_active)
    modem.sleep(modem.reset_pulse_ms)
    modem.reset_pin.value(1 - modem.reset_active)
    modem.port.clear()
    try:
        modem.port.wait_urc(modem.BOOT_URC, modem.boot_ms)
    except ModemTimeout:
        pass  # some firmware prints nothing at boot: AT decides
    modem.sync(attempts=5)


def days_from_civil(year, month, day):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm): no epoch quirks of time.mktime."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def parse_cclk(line):
    """Unix seconds (UTC) from '+CCLK: "yy/MM/dd,hh:mm:ss+zz"' (TS 27.007 §8.15; zz in quarter hours)."""
    text = fields(line, "+CCLK:")
    text = ",".join(text).strip('"')
    try:
        date, clock = text.split(",")
        zone = clock[8:]
        year, month, day = [int(part) for part in date.split("/")]
        hour, minute, second = [int(part) for part in clock[:8].split(":")]
        quarters = int(zone) if zone else 0
    except (ValueError, IndexError):
        raise ModemGarbage("unreadable network time %r" % line)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ModemGarbage("impossible network time %r" % line)
    local = days_from_civil(2000 + year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return local - quarters * 900


def network_time(modem):
    """UTC unix seconds from the network clock (AT+CCLK?), for a node whose RTC lost its time."""
    for line in modem.command("AT+CCLK?", response="+CCLK:"):
        if line.startswith("+CCLK:"):
            return parse_cclk(line)
    raise ModemGarbage("AT+CCLK? answered no +CCLK line")


def set_clock(node, modem):
    """Set the RTC from the network clock (delivery, when the RTC lost its time); a failure is noted, not raised."""
    try:
        seconds = network_time(modem) - EPOCH_OFFSET
        now = time.gmtime(seconds)  # (year, month, mday, hour, minute, second, weekday, yearday)
        machine.RTC().datetime((now[0], now[1], now[2], now[6], now[3], now[4], now[5], 0))
        node.report["clock_set"] = True
    except (ModemError, OSError, ValueError) as error:
        node._note("clock", error)


# --- Quectel BC66 / BC95 (quectel.Bc66) ---

def bc66_setup(modem, settings):
    """Bc66.setup: echo off, numeric errors, +CSCON, deep sleep, PSM, eDRX off, the socket API probed."""
    from quectel import API_QI, RAI_NONE  # loaded already: the modem is a Bc66
    Cellular.setup(modem, settings)
    modem.command("AT+CSCON=1")  # +CSCON: <mode> URCs: when the radio connects and is released
    try:
        modem.command("AT+QSCLK=1")
    except CommandError:
        pass  # BC95 firmware has no AT+QSCLK: it sleeps whenever it may
    psm = settings.get("psm")
    if psm:
        modem.command("AT+CPSMS=1,,,%s,%s" % (quoted(psm["tau"]), quoted(psm["active"])))
        modem.command("AT+CEDRXS=0")
    modem.socket_api = _probe_socket_api(modem)
    if modem.socket_api == API_QI:
        modem.command('AT+QICFG="dataformat",1,1')
        if not modem.rai:
            # the module may keep an RAI setting from an earlier configuration
            try:
                modem.command("AT+QNBIOTRAI=%d" % RAI_NONE)
                modem._rai_set = RAI_NONE
            except CommandError:
                pass
    return {"socket_api": modem.socket_api}


def _probe_socket_api(modem):
    from quectel import API_NSO, API_QI
    for api, probe, answer in ((API_QI, "AT+QIOPEN=?", "+QIOPEN:"), (API_NSO, "AT+NSOCR=?", "+NSOCR:")):
        try:
            modem.command(probe, response=answer)  # the test form's answer is no URC
            return api
        except CommandError:
            pass
    raise ModemError("this module's firmware offers neither AT+QIOPEN nor AT+NSOCR: no UDP socket API")

