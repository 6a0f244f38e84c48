"""The node's cycle: wake, sample, sign one envelope, keep it in the outbox, send what is unacked, deep-sleep.

One cycle per wake (timer, or the tamper switch):

1. recover: finish what a power cut interrupted (chainstate.recover);
2. sample: temperature, tamper switch, battery, tilt and motion; a broken
   sensor costs its record, an alarm (tamper, tilt, motion, a gap to report)
   makes the envelope an alarm envelope; the first envelope after a start
   declares the heartbeat (device.heartbeat_s = the wake interval);
3. sign: reserve the seq in flash (with the signed counters that include this
   envelope), seal a version 2 envelope (counters, the newest lender token,
   the enrollment binding from the config), append it to the outbox, move the
   chain head (the order that makes seqs single-use, see chainstate);
4. send: wake the modem (reset line if it is hung), attach, and POST each
   buffered envelope to the lender's node resource, alarms first, oldest
   first, at most max_sends_per_cycle; the ack's stored and already-present
   seqs leave the outbox, permanently refused ones too (the lender keeps them
   in quarantine), everything else stays for the next cycle; the newest
   lender token the acks brought is kept in flash for the next envelopes;
5. sleep: close the socket (the modem then enters PSM on its own, as set up
   once), arm the tamper pin as a wake source, machine.deepsleep.

A failure in sending never loses the envelope: it is in flash before the
modem is touched. Every NodeError, and any other Exception, ends the step or
the cycle with a log line and the node goes to sleep as usual; the watchdog
(always on) catches what hangs.
"""

import gc
import json
import os
import sys
import time

import machine

import chainstate
import outbox as outbox_module
from errors import AckError, ConfigError, DeliveryError, ModemError, NodeError, SensorError, StorageError

# Refusals that sending again cannot change (telemetry.ack.Reason): malformed, bad signature,
# oversize, conflict, chain, binding (bound to another enrollment). Unknown key (2) and revoked (4) may
# change at the lender, and so may a code this firmware does not know: they stay.
PERMANENT_REFUSALS = (1, 3, 5, 6, 7, 8)
# Whole-request answers about this one body (not a CBOR envelope, too large, wrong format): final.
UNSENDABLE = (0x80, 0x8D, 0x8F)  # 4.00, 4.13, 4.15
CLOCK_VALID_AFTER = 1704067200  # 2024-01-01: an RTC before this has lost its time
ALARM_PREFIX = "alarm."  # an envelope holding such a record counts in the signed alarm counter
HEARTBEAT_S = "device.heartbeat_s"  # telemetry.manifest: the longest the node stays silent, its wake interval
DEFAULT_SLEEP_MS = 900000
_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0  # ports counting from 2000


def release(*names):
    """Forget modules the rest of the cycle does not need, so their code goes back to the heap.

    The cycle imports each phase's modules when the phase starts (sensors,
    then signing, then the modem and CoAP) and releases them after: the node
    needs the heap of its largest phase, not of all of them (an ESP32 without
    PSRAM leaves MicroPython ~110 KB).
    """
    for name in names:
        sys.modules.pop(name, None)
    gc.collect()


def log(text):
    print("node: " + text, file=sys.stderr)


def unix_time():
    """The RTC as unix seconds, or None when it has not been set since power was lost."""
    now = int(time.time()) + _EPOCH_OFFSET
    return now if now >= CLOCK_VALID_AFTER else None


class Node:
    """One node: its config and key, its flash state under root/state, its hardware (see the module docstring)."""

    def __init__(self, root, config, seed, watchdog, reset_cause=None, wake_reason=None):
        self.root = root
        self.config = config
        self.seed = seed
        self.watchdog = watchdog
        self.reset_cause = machine.reset_cause() if reset_cause is None else reset_cause
        self.wake_reason = wake_reason
        if wake_reason is None:
            reason = getattr(machine, "wake_reason", None)
            self.wake_reason = reason() if reason is not None else 0
        state_dir = root.rstrip("/") + "/state"
        try:
            os.mkdir(state_dir)
        except OSError:
            pass  # exists
        self.state_dir = state_dir
        self.tamper_latched = False
        self.started = True
        self.tamper_switch = None
        self.state = None
        self.report = {}  # what this cycle did, for the log line and the tests
        self.report["errors"] = []

    def feed(self):
        self.watchdog.feed()

    def _note(self, step, error):
        text = "%s: %s: %s" % (step, type(error).__name__, error)
        self.report["errors"].append(text)
        log(text)

    def _file(self, name):
        return self.state_dir + "/" + name

    # --- the cycle ---

    def cycle(self):
        """Run one cycle (steps 1 to 4); returns the report. Sleeping is the caller's (main) last step."""
        config, report = self.config, self.report
        state = self.state = chainstate.ChainState(self._file("chain.bin"))
        # outbox.bin: the 320-byte slots of firmware before envelope version 2, moved over once
        box = outbox_module.Outbox(self._file("outbox2.bin"), config.outbox_slots, legacy=self._file("outbox.bin"))
        report["recovery"] = state.recover(box)
        powered_on = self.reset_cause != machine.DEEPSLEEP_RESET
        if powered_on or state.fresh:
            state.boot += 1
        self.feed()
        self.started = powered_on or state.fresh  # a new boot: its first envelope declares the heartbeat
        records, alarm = self.sample(powered_on)
        self.feed()
        seq, raw, alarm = self.seal(state, box, records, alarm)
        report["seq"] = seq
        report["boot"] = state.boot
        report["payload_bytes"] = len(raw)
        report["alarm"] = alarm
        del records, raw  # in flash now: the send phase reads each envelope back, one at a time
        self.feed()
        self.send(box)
        report["buffered"] = box.seqs()
        return report

    # --- 2. sampling ---

    def _pin(self, number, mode, pull=None):
        if pull is None:
            return machine.Pin(number, mode)
        return machine.Pin(number, mode, pull)

    def sample(self, powered_on):
        """The readings of this wake, and whether they make an alarm envelope.

        After a start (self.started), the manifest too: device.heartbeat_s, the wake interval, so the lender knows
        how long this node may stay silent (the first envelope of every boot declares it; ~28 bytes, once).
        """
        try:
            return self._sample(powered_on)
        finally:
            release("sensors", "onewire")

    def _sample(self, powered_on):
        import sensors

        config = self.config
        now = unix_time()
        records = []
        alarm = False
        if config.onewire_pin is not None:
            try:
                import onewire

                bus = onewire.OneWire(self._pin(config.onewire_pin, machine.Pin.IN))
                celsius = sensors.DS18B20(bus, config.ds18b20_conversion_ms, feed=self.feed).celsius()
                records.append({"name": "temp", "value": celsius, "unit": "Cel"})
            except (SensorError, ImportError, OSError) as error:
                self._note("temperature", error)
        if config.tamper_pin is not None:
            switch = sensors.TamperSwitch(self._pin(config.tamper_pin, machine.Pin.IN, machine.Pin.PULL_UP),
                                          config.tamper_open_level)
            opened = switch.is_open() or self.wake_reason == getattr(machine, "PIN_WAKE", -1) or self._take_tamper_flag()
            if opened:
                records.append({"name": "alarm.tamper", "boolean": True})
                alarm = True
            else:
                records.append({"name": "tamper", "boolean": False})
            self._watch_tamper(switch)
        if config.battery_adc_pin is not None:
            try:
                pin = self._pin(config.battery_adc_pin, machine.Pin.IN)
                attenuation = getattr(machine.ADC, "ATTN_11DB", None)  # ESP32: the full 0..3.3 V range
                adc = machine.ADC(pin) if attenuation is None else machine.ADC(pin, atten=attenuation)
                records.append({"name": "batt", "value": sensors.Battery(adc, config.battery_divider).volts(), "unit": "V"})
            except (SensorError, OSError) as error:
                self._note("battery", error)
        if config.i2c is not None:
            try:
                alarm = self._motion(records, powered_on) or alarm
            except (SensorError, OSError, ValueError) as error:
                self._note("accelerometer", error)
        if self.started:
            records.append({"name": HEARTBEAT_S, "value": config.interval_s, "unit": "s"})
        if now is not None:
            for record in records:
                record["time"] = now
        return records, alarm

    def _motion(self, records, powered_on):
        import sensors

        config = self.config
        bus = config.i2c
        i2c = machine.I2C(bus.get("id", 0), scl=self._pin(bus["scl"], machine.Pin.OUT),
                          sda=self._pin(bus["sda"], machine.Pin.OUT))
        accelerometer = sensors.LIS3DH(i2c, config.lis3dh_address)
        if powered_on:
            accelerometer.setup(config.motion_mg)
        alarm = False
        if accelerometer.moved():
            records.append({"name": "alarm.motion", "boolean": True})
            alarm = True
        vector = accelerometer.acceleration_mg()
        reference = self._orientation(vector)
        tilt = sensors.tilt_degrees(vector, reference)
        if tilt >= config.tilt_alarm_deg:
            records.append({"name": "alarm.tilt", "value": sensors.to_half(tilt), "unit": "deg"})
            alarm = True
        return alarm

    def _orientation(self, vector):
        """The installed orientation: the first gravity vector this node measured, kept in flash."""
        name = self._file("orientation.json")
        try:
            with open(name) as file:
                reference = json.loads(file.read())
            if isinstance(reference, list) and len(reference) == 3:
                return reference
        except (OSError, ValueError):
            pass
        with open(name, "w") as file:
            file.write(json.dumps(list(vector)))
        return list(vector)

    def _watch_tamper(self, switch):
        """Latch a tamper edge that happens while the node is awake, for the next wake to report."""
        def latch(pin):
            self.tamper_latched = True

        trigger = machine.Pin.IRQ_RISING if switch.open_level else machine.Pin.IRQ_FALLING
        switch.pin.irq(handler=latch, trigger=trigger)
        self.tamper_switch = switch

    def _take_tamper_flag(self):
        try:
            os.remove(self._file("tamper.flag"))
            return True
        except OSError:
            return False

    # --- 3. signing ---

    def seal(self, state, box, records, alarm):
        gap = state.gap_dict()
        counted = False
        for record in records:
            if record["name"].startswith(ALARM_PREFIX):
                counted = True
        seq = state.reserve(counted, gap is not None)
        import ed25519
        import envelope

        key = ed25519.SigningKey(self.seed)
        raw = envelope.seal(key, self.config.device, state.boot, seq, state.prev, records, gap,
                            counters=state.counters(), token=state.token, binding=self.config.binding)
        del key, ed25519, envelope
        release("ed25519", "ed25519_table", "sha512", "envelope", "senml")
        alarm = alarm or gap is not None
        held = len(box)
        dropped = box.append(seq, raw, alarm)
        losses = []
        if dropped:
            losses.append(("overflow", min(dropped), max(dropped), len(dropped), held, box.alarms_dropped))
            log("outbox full: dropped seq(s) %r" % (dropped,))
            self.report["dropped"] = dropped
        state.commit(seq, chainstate.digest(raw), gap is not None, losses)
        if gap is not None:
            self.report["gap"] = gap
        self.report["counters"] = state.counters()
        return seq, raw, alarm

    # --- 4. sending ---

    def _profile(self):
        try:
            with open(self._file("modem.json")) as file:
                profile = json.loads(file.read())
            if isinstance(profile, dict) and profile.get("model") == self.config.modem_model:
                return profile
        except (OSError, ValueError):
            pass
        return None

    def _save_profile(self, profile):
        with open(self._file("modem.json"), "w") as file:
            file.write(json.dumps(profile))

    def make_modem(self, port, profile):
        config = self.config
        options = {"timeout_ms": config.timeout_ms, "network_timeout_ms": config.network_timeout_ms,
                   "reset_active": config.reset_active, "reset_pulse_ms": config.reset_pulse_ms,
                   "boot_ms": config.boot_ms}
        if config.reset_pin is not None:
            options["reset_pin"] = machine.Pin(config.reset_pin, machine.Pin.OUT)
        if config.modem_model == "sim7080g":
            import simcom

            return simcom.Sim7080(port, apn=config.apn, **options)
        import quectel

        return quectel.Bc66(port, socket_api=(profile or {}).get("socket_api"), **options)

    def _uart(self):
        config = self.config
        settings = {"baudrate": config.baudrate, "timeout": 0, "timeout_char": 0, "rxbuf": 1024}
        if config.uart_tx is not None:
            settings["tx"] = config.uart_tx
        if config.uart_rx is not None:
            settings["rx"] = config.uart_rx
        return machine.UART(config.uart, **settings)

    def send(self, box):
        from atport import AtPort

        report = self.report
        report["sent"] = []
        report["acked"] = []
        report["refused"] = []
        report["transmissions"] = 0
        report["at_commands"] = 0
        if not len(box):
            return
        try:
            uart = self._uart()
        except (OSError, ValueError) as error:
            self._note("modem UART", error)
            return
        port = AtPort(uart, feed=self.feed)
        try:
            self._send(box, port)
        except NodeError as error:
            self._note("send", error)
        finally:
            report["at_commands"] = port.commands
            report["at_garbage"] = port.garbage
            try:
                uart.deinit()
            except (OSError, AttributeError):
                pass

    def _send(self, box, port):
        config, report = self.config, self.report
        profile = self._profile()
        modem = self.make_modem(port, profile)
        reset = modem.wake()
        report["modem_reset"] = reset
        if reset or profile is None or self.reset_cause != machine.DEEPSLEEP_RESET:
            settings = {"psm": config.psm}
            profile = {"model": config.modem_model}
            profile.update(modem.setup(settings))
            self._save_profile(profile)
        modem.attach()
        if unix_time() is None:
            self._set_clock(modem)
        socket = modem.open_udp(config.lender_host, config.lender_port)
        import uplink

        settled = []
        try:
            link = uplink.Uplink(modem, socket, config.lender_path,
                                 uplink.Timing(config.ack_timeout_ms, max_retransmit=config.max_retransmit,
                                               response_timeout_ms=config.response_timeout_ms))
            try:
                for seq in box.seqs()[: config.max_sends]:
                    self.feed()
                    if not self._deliver(box, link, seq, settled):
                        break
            finally:
                report["transmissions"] = link.transmissions
                report["ignored_datagrams"] = link.ignored
        finally:
            if settled:
                box.remove(settled)
            self._keep_token()
            try:
                modem.close(socket)
            except ModemError as error:
                self._note("close", error)
            modes = getattr(modem, "radio_modes", None)
            if modes is not None:
                try:
                    report["radio_modes"] = modes()
                except ModemError as error:
                    self._note("radio", error)

    def _deliver(self, box, link, seq, settled):
        """POST one buffered envelope; False when the lender is unreachable (stop for this cycle)."""
        import coap
        import uplink

        report = self.report
        try:
            raw = box.read(seq)
        except StorageError as error:
            self._note("outbox", error)
            if self.state is not None:  # the envelope is gone: say so in a signed gap record
                self.state.note_gap("storage-failure", seq, seq, 1)
                self.state.save()
            return True
        report["sent"].append(seq)
        try:
            response = link.post(raw)
        except DeliveryError as error:
            self._note("delivery of seq %d" % seq, error)
            return False
        if response.code != coap.CHANGED:
            try:
                text = response.payload.decode()
            except UnicodeError:
                text = ""
            self._note("delivery of seq %d" % seq, NodeError("lender answered %s %s" % (coap.code_text(response.code), text)))
            if response.code in UNSENDABLE:
                settled.append(seq)  # the lender keeps the body in quarantine; this envelope can never pass
                report["refused"].append([seq, coap.code_text(response.code)])
                return True
            return False  # 4.01/4.03 (this node), a wrong path, or 5.xx: the same for every envelope; next cycle
        try:
            ack = uplink.parse_ack(response.payload)
        except AckError as error:
            self._note("ack of seq %d" % seq, error)
            return True
        if ack.token is not None and self.state is not None and self.state.take_token(ack.token):
            self.report["token_changed"] = True
        if seq in ack.settled():
            settled.append(seq)
            report["acked"].append(seq)
        else:
            for _, reason, text in ack.refused:
                log("lender refused seq %d: reason %d, %s" % (seq, reason, text))
                report["refused"].append([seq, reason])
                if reason in PERMANENT_REFUSALS:
                    settled.append(seq)  # the lender keeps it in quarantine; resending cannot help
        return True

    def _keep_token(self):
        """Save the newest lender token the acks brought (one flash write per cycle, only when it is newer)."""
        state = self.state
        if state is None or not self.report.get("token_changed"):
            return
        try:
            state.save()
        except StorageError as error:
            self._note("token", error)

    def _set_clock(self, modem):
        try:
            seconds = modem.network_time() - _EPOCH_OFFSET
            now = time.gmtime(seconds)  # (year, month, mday, hour, minute, second, weekday, yearday)
            machine.RTC().datetime((now[0], now[1], now[2], now[6], now[3], now[4], now[5], 0))
            self.report["clock_set"] = True
        except (ModemError, OSError, ValueError) as error:
            self._note("clock", error)

    # --- 5. sleeping ---

    def sleep_ms(self):
        if self.tamper_latched:
            try:
                with open(self._file("tamper.flag"), "w") as file:
                    file.write("1")
            except OSError as error:
                self._note("tamper flag", error)
            return 1000  # report it at once
        return self.config.interval_s * 1000

    def arm_wake(self):
        switch = self.tamper_switch
        if switch is None or switch.is_open():
            return  # an open switch would wake the node at once: the timer alone wakes it
        level = getattr(machine.Pin, "WAKE_HIGH" if switch.open_level else "WAKE_LOW", None)
        if level is None:
            level = machine.Pin.IRQ_RISING if switch.open_level else machine.Pin.IRQ_FALLING
        try:
            switch.pin.irq(trigger=level, wake=machine.DEEPSLEEP)
        except (ValueError, TypeError, OSError) as error:
            self._note("tamper wake", error)


last_report = None  # the last cycle's report, for a look from the REPL (and for the tests)


def run(root="/"):
    """One cycle: returns (milliseconds to sleep, the watchdog). Every failure ends here, never in a crash."""
    global last_report
    watchdog = None
    sleep_ms = DEFAULT_SLEEP_MS
    last_report = None
    try:
        import config as config_module

        config, seed = config_module.load(root)
        del config_module
        release("config")  # the Config is plain data: the checking code goes back to the heap
        watchdog = machine.WDT(timeout=config.watchdog_ms)
        sleep_ms = config.interval_s * 1000
        node = Node(root, config, seed, watchdog)
        last_report = node.cycle()
        log(json.dumps(last_report))
        sleep_ms = node.sleep_ms()
        node.arm_wake()
    except ConfigError as error:
        log("not provisioned: %s" % error)
    except Exception as error:  # a bug must cost one cycle, never the node
        log("cycle failed: %s: %s" % (type(error).__name__, error))
        sys.print_exception(error)
    if watchdog is None:
        # Config unreadable: still never run without a watchdog (8 s fits the RP2040's 8388 ms maximum).
        watchdog = machine.WDT(timeout=8000)
    watchdog.feed()
    return sleep_ms, watchdog


def main(root="/"):
    """The node's life: one cycle, then deep sleep (the chip powers down and boots again into main.py)."""
    sleep_ms, _ = run(root)
    machine.deepsleep(sleep_ms)
