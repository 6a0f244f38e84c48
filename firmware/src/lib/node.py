"""The node's cycle: wake, sample, sign one envelope, keep it in the outbox, send what is unacked, deep-sleep.

One cycle per wake (timer, or the tamper switch):

1. recover: finish what a power cut interrupted (chainstate.recover);
2. sample: temperature, tamper switch, battery, tilt and motion; a broken
   sensor costs its record, an alarm (tamper, tilt, motion, a gap to report)
   makes the envelope an alarm envelope; the first envelope after a start
   declares the heartbeat (device.heartbeat_s = the wake interval);
3. sign: reserve the seq in flash (with the signed counters that include this
   envelope), seal a version 3 envelope (version 2's counters, newest lender
   token and enrollment binding from the config, the readings as the compact
   node readings map; version 2 if a record does not fit it), append it to the outbox, move the
   chain head (the order that makes seqs single-use, see chainstate);
4. send: load the OSCORE context (node.oscore; without one the envelopes
   wait in the outbox, unless node.json says "insecure": true, which sends
   plain CoAP and is warned about at every start), wake the modem (reset
   line if it is hung), attach, and POST each buffered envelope to the
   lender's node resource, alarms first, oldest first, at most
   max_sends_per_cycle, the last with Release Assistance; an envelope leaves
   the outbox only on an ack that names it and that OSCORE authenticated
   (stored, already present, or refused for good: then a signed "refused"
   gap record says so, saved before the envelope goes); everything else,
   whole-request errors and unauthenticated answers included, stays for the
   next cycle; the newest lender token an authenticated ack brought is kept
   in flash for the next envelopes;
5. commands: the lender's signed command an authenticated ack brought (ack
   key 7, at most one a cycle) is kept in flash (state/command.bin) and the
   node wakes again after COMMAND_SLEEP_MS; that wake only verifies and
   applies it (cmdstate.startup, on a fresh heap) and sleeps COMMAND_SLEEP_MS
   again; the wake after it signs the outcome into its envelope (an
   inspection's is the snapshot, sent ahead of the backlog). After a power-on
   or a tamper wake the command is applied at the start of the whole cycle
   instead. The lender's configuration in force sets the interval and
   thresholds, its permits turn openings into events (step 2);
6. sleep: close the socket (the modem then enters PSM on its own, as set up
   once), arm the tamper pin as a wake source, machine.deepsleep.

A failure in sending never loses the envelope: it is in flash before the
modem is touched. Every NodeError, and any other Exception, ends the step or
the cycle with a log line and the node goes to sleep as usual; the watchdog
(always on) catches what hangs.
"""

import json
import os
import sys

import machine

import chainstate
import outbox as outbox_module
from errors import ConfigError
from runtime import log, release

ALARM_PREFIX = "alarm."  # an envelope holding such a record counts in the signed alarm counter
DEFAULT_SLEEP_MS = 900000
COMMAND_SLEEP_MS = 1000  # a command came: wake again at once to apply it and answer (cmdstate.startup)


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
        self.tamper_pin = None  # the switch's Pin and its open level, once sampling found one (no sensors object:
        self.tamper_open_level = 1  # that would keep the sampling phase's code alive through the send phase)
        self.state = None
        self.permits = None  # the lender's permits in force ([from, until, inputs], cmdstate)
        self.command = None  # the signed command an ack brought this cycle (unverified), kept for the next wake
        self.applying = False  # this wake applied (or refused) a kept command
        self.applied_only = False  # ... and did nothing else (the next wake, at once, signs the answer)
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
        if (not powered_on and not state.fresh and self.wake_reason != getattr(machine, "PIN_WAKE", -1)
                and self._exists("command.bin")):
            # A command the last wake kept: verify and apply it, and nothing else (its code and the verifier leave the
            # heap fragmented); the node wakes again at once, with a fresh heap, to sign and send the answer. After
            # a power-on or a tamper wake the whole cycle runs and applies it at its start.
            self.load_commands(state)
            self.applied_only = True
            return report
        owed = self.load_commands(state)
        if powered_on or state.fresh:
            state.boot += 1
        self.feed()
        self.started = powered_on or state.fresh  # a new boot: its first envelope declares the heartbeat
        records, alarm = self.sample(powered_on)
        first = False
        if owed:  # the outcome owed to the lender; an inspection's snapshot goes ahead of the backlog, as an alarm
            first = owed[1]["string"] == "inspect"
            if records and "time" in records[0]:
                for record in owed:
                    record["time"] = records[0]["time"]
            records += owed
            report["answered"] = owed[0]["value"]
        del owed
        self.feed()
        seq, raw, alarm = self.seal(state, box, records, alarm, first)
        report["seq"] = seq
        report["boot"] = state.boot
        report["payload_bytes"] = len(raw)
        report["alarm"] = alarm
        del records, raw  # in flash now: the send phase reads each envelope back, one at a time
        self.feed()
        self.send(box)
        report["buffered"] = box.seqs()
        if self.command is not None:  # after the send phase, whose heap is the cycle's peak
            import cmdstate

            cmdstate.keep(self)
            release("cmdstate")
        return report

    # --- 1b. the lender's commands ---

    def _exists(self, name):
        try:
            os.stat(self._file(name))
            return True
        except OSError:
            return False

    def load_commands(self, state):
        """Apply a kept command and return the owed outcome's records (cmdstate.startup; nothing loaded without)."""
        if not self._exists("commands.bin") and not self._exists("command.bin"):
            return []
        import cmdstate

        try:
            return cmdstate.startup(self, state)
        finally:
            release("cmdstate", "commands", "cbor", "ed25519", "ed25519_table", "sha512")

    # --- 2. sampling ---

    def sample(self, powered_on):
        """The readings of this wake, and whether they make an alarm envelope.

        After a start (self.started), the manifest too: device.heartbeat_s, the wake interval, so the lender knows
        how long this node may stay silent (the first envelope of every boot declares it; ~28 bytes, once).
        """
        import sampling

        try:
            return sampling.sample(self, powered_on)
        finally:
            release("sampling", "sensors", "onewire")

    # --- 3. signing ---

    def seal(self, state, box, records, alarm, first=False):
        """Sign records into the next envelope and store it; `first`: send it ahead of the backlog (as an alarm)."""
        gap = state.gap_dict()
        counted = False
        for record in records:
            if record["name"].startswith(ALARM_PREFIX):
                counted = True
        alarm = alarm or gap is not None
        priority = alarm or first
        seq = state.reserve(counted, gap is not None, box.victim(priority))
        import ed25519
        import envelope

        key = ed25519.SigningKey(self.seed)
        raw = envelope.seal(key, self.config.device, state.boot, seq, state.prev, records, gap,
                            counters=state.counters(), token=state.token, binding=self.config.binding, compact=True)
        del key, ed25519, envelope
        release("ed25519", "ed25519_table", "sha512", "envelope", "senml", "cbor")
        held = len(box)
        dropped = box.append(seq, raw, priority)
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

    def send(self, box):
        """Deliver what the outbox holds (the delivery module: OSCORE, the modem, CoAP), then forget that code."""
        import delivery

        try:
            delivery.send(self, box)
        finally:
            release("delivery", "oscore", "uplink", "coap", "ack", "atport", "quectel", "quectelnso", "simcom",
                    "modemsetup", "cellular")

    # --- 5. sleeping ---

    def sleep_ms(self):
        if self.tamper_latched:
            try:
                with open(self._file("tamper.flag"), "w") as file:
                    file.write("1")
            except OSError as error:
                self._note("tamper flag", error)
            return 1000  # report it at once
        if self.applied_only or (self.report.get("command_kept") and not self.applying):
            return COMMAND_SLEEP_MS  # not twice in a row: a command refused at every wake costs no extra wakes
        return self.config.interval_s * 1000

    def latch_tamper(self, pin):
        """The tamper pin's interrupt handler while awake: the switch opened, report it at the next wake."""
        self.tamper_latched = True

    def arm_wake(self):
        pin, open_level = self.tamper_pin, self.tamper_open_level
        if pin is None or pin.value() == open_level:
            return  # an open switch would wake the node at once: the timer alone wakes it
        level = getattr(machine.Pin, "WAKE_HIGH" if open_level else "WAKE_LOW", None)
        if level is None:
            level = machine.Pin.IRQ_RISING if open_level else machine.Pin.IRQ_FALLING
        try:
            pin.irq(trigger=level, wake=machine.DEEPSLEEP)
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
        if config.insecure:
            log("WARNING: \"insecure\": true in node.json: without node.oscore this node sends plain CoAP; anyone on "
                "the path reads its readings and can forge the acks that free its outbox")
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
