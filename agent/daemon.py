"""The gateway daemon: sample the sensors, sign every reading, spool it, send it.

One asyncio task per polled sensor (each read isolated, so a failing or hung
sensor becomes a signed fault record and never stops the others), one task
for push inputs (tamper and door contacts report each change at once), the
uplink, and the modem health monitor (agent.health) when one is given.
Signing and spooling happen inline in the event loop: an append at
synchronous=FULL costs ~0.15 ms here (bench/spool.py).

At start it signs its manifest (the assets and their sensors, its heartbeat
interval and the digest of its rules, telemetry.manifest); whenever
`heartbeat_s` passes without any envelope signed, it signs a heartbeat
(`device.heartbeat`, the uptime in seconds), so silence is never normal.

Runs under systemd as Type=notify: READY=1 once the chain is resumed, then
WATCHDOG=1 at half the watchdog interval while the loop is alive.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence

from agent.clock import Instant, TrustedClock, redate, stamp
from agent.commands import Applied, CommandInbox
from agent.exc import SpoolError, StateError
from agent.freshness import LenderTokens
from agent.health import ModemHealthMonitor
from agent.recorder import Recorder
from agent.rules import Emission, Manifest, RulesEngine, RulesStateFile
from agent.spool import Spool
from agent.state import AgentState
from agent.uplink import Result, Uplink
from drivers.exc import SensorFault
from drivers.sensor import Sample, queue_listener, read_isolated
from durable import sdnotify
from durable.exc import DurableError
from telemetry.command import LOCAL_RULES, Configure, Inspect, Outcome, RotateKey, outcome_records
from telemetry.envelope import Envelope, Gap, GapReason, carries_alarm
from telemetry.identity import Identity
from telemetry.manifest import DEFAULT_HEARTBEAT_S, HEARTBEAT, rules_digest
from telemetry.rotation import certify_data, encode_certification, handover_records
from telemetry.senml import Record

log = logging.getLogger(__name__)

FAULT_PREFIX = "fault."
# seconds between polls of /c at least while the lender's command notices are observed: the poll goes out on the
# observation's socket, so it also keeps a NAT's binding for the lender's notifications alive
OBSERVING_POLL = 30.0


def sample_record(sample: Sample) -> Record:
    """The SenML record of a driver's sample (booleans as vb, text as vs, numbers as v)."""
    value = sample.value
    if isinstance(value, bool):
        return Record(sample.name, boolean=value, unit=sample.unit, time=sample.time)
    if isinstance(value, str):
        return Record(sample.name, string=value, unit=sample.unit, time=sample.time)
    return Record(sample.name, value=value, unit=sample.unit, time=sample.time)


def fault_record(sensor: str, fault: SensorFault, now: float) -> Record:
    """A signed statement that a sensor failed, with the driver's reason."""
    return Record(FAULT_PREFIX + sensor, string=str(fault)[:200], time=now)


def _notify_systemd(message: str) -> None:
    """Tell systemd `message`, silently: a lost watchdog ping must never stop the daemon."""
    with contextlib.suppress(OSError):
        sdnotify.notify(message)


class Agent:
    """The daemon's run loop over already-built parts (dependencies are passed in, never wired later)."""

    def __init__(
        self,
        *,
        device: str,
        identity: Identity,
        spool: Spool,
        state: AgentState,
        sensors: Sequence[object] = (),
        uplink: Uplink | None = None,
        read_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        rules: RulesEngine | None = None,
        trusted_clock: TrustedClock | None = None,
        rules_state: RulesStateFile | None = None,
        rule_tick: float = 1.0,
        modem_health: ModemHealthMonitor | None = None,
        tokens: LenderTokens | None = None,
        binding: bytes | None = None,
        heartbeat_s: float | None = None,
        rules_digest: str = rules_digest((), {}),
        commands: CommandInbox | None = None,
        command_poll: float = 5.0,
        local_rules_digest: str | None = None,
    ) -> None:
        self.device = device
        self.identity = identity
        self.spool = spool
        self.state = state
        self.sensors = list(sensors)
        self.uplink = uplink
        self.read_timeout = read_timeout
        self.clock = clock
        self.recorder: Recorder | None = None
        self.unstored = 0  # readings the spool could not take since the last gap record
        self.unstored_alarms = 0  # of which alarms: the gap record says so (alarms_dropped)
        self.started = asyncio.Event()
        # edge rules (agent.rules) and time trust (agent.clock): every sample is judged, alarms go out at once
        self.rules = rules
        self.trusted_clock = trusted_clock
        self.rules_state = rules_state
        self.rule_tick = rule_tick
        # the modem health monitor (agent.health): its status and alarms go through record(), SIM/IMEI to modem_identity()
        self.modem_health = modem_health
        # freshness and binding (issue 12): the newest lender token and the enrollment binding go into every envelope
        self.tokens = tokens
        self.binding = binding
        # what the manifest declares: the heartbeat interval (the uplink's, by default) and the rules digest
        if heartbeat_s is None:
            heartbeat_s = uplink.config.heartbeat_s if uplink is not None else DEFAULT_HEARTBEAT_S
        self.heartbeat_s = float(heartbeat_s)
        self.rules_digest = rules_digest
        # the lender's signed commands (agent.commands): fetched from /c when the observed /c/o says one is pending,
        # and polled every `command_poll` s (every OBSERVING_POLL s at least while the observation is live)
        self.commands = commands
        self.command_poll = command_poll
        # the rules digest of agent.toml's own [[assets]] and [rules]: while the lender's configuration is in force
        # and differs from it, every manifest is followed by a signed LOCAL_RULES record (a local edit, a mismatch)
        self.local_rules_digest = local_rules_digest

    def record(self, records: list[Record], instant: Instant | None = None, *, urgent: bool = False) -> Envelope | None:
        """Sign and spool one reading; an alarm wakes the uplink at once.

        With a trusted clock, the envelope carries its clock statement and the
        records keep their times only while the clock is synchronized.

        If it cannot be stored — the spool cannot take it, or the state file
        cannot reserve its seq (disk full, card failing) — the reading is
        counted as lost and the agent keeps running; the first append that
        works again is followed by a signed gap record with the count, and how
        many of them were alarms.
        """
        clock = None
        if self.trusted_clock is not None:
            instant = instant or self.trusted_clock.now()
            records, clock = list(stamp(records, instant)), instant.statement()
        try:
            envelope = self.recorder.record(records, clock=clock, urgent=urgent)
            if self.unstored:
                self.recorder.append(gap=Gap(GapReason.STORAGE_FAILURE.value, count=self.unstored,
                                             alarms_dropped=self.unstored_alarms))
                log.warning("spool works again; %d readings (%d alarms) were lost meanwhile (gap record signed)",
                            self.unstored, self.unstored_alarms)
                self.unstored = self.unstored_alarms = 0
        except (SpoolError, StateError) as exc:
            self.unstored += 1
            self.unstored_alarms += carries_alarm(records)
            if self.unstored == 1 or self.unstored % 100 == 0:
                log.error("cannot spool a reading (%d lost so far): %s", self.unstored, exc)
            return None
        if (envelope.alarm or urgent) and self.uplink is not None:
            self.uplink.wake()
        return envelope

    def record_measured(self, records: list[Record], *, urgent: bool = False) -> Envelope | None:
        """Record readings a driver dated with the system clock, moved onto the trusted time first."""
        if self.trusted_clock is None:
            return self.record(records, urgent=urgent)
        instant = self.trusted_clock.now()
        return self.record(list(redate(records, instant)), instant, urgent=urgent)

    async def command(self, inbox: CommandInbox, raw: bytes) -> Envelope | None:
        """Act on one command from the lender and sign what was done; for an inspection, with a snapshot.

        The snapshot reads every sensor of the named assets (all sensors when
        none are named, or when the gateway has no rules) now, and goes into the
        same envelope as the inspection's nonce. A command the inbox refused
        unverified changes nothing and signs nothing.
        """
        applied = inbox.receive(raw)
        if applied is None:
            return None
        envelope = await self.answer(inbox, applied)
        if isinstance(applied.command.body, Configure) and applied.outcome is Outcome.APPLIED:
            self.reconfigure(inbox)
        return envelope

    async def answer(self, inbox: CommandInbox, applied: Applied) -> Envelope | None:
        """Sign the outcome of a command the inbox acted on (with an inspection's snapshot); then it is owed no more."""
        records = list(applied.records)
        body = applied.command.body
        if isinstance(body, RotateKey) and applied.outcome is Outcome.APPLIED:
            return self.rotate(inbox, applied)
        if isinstance(body, Inspect) and applied.outcome is Outcome.APPLIED:
            wanted = None
            if body.assets and self.rules is not None:
                wanted = {name for asset in self.rules.assets if asset.name in body.assets for name in asset.sensors}
            for sensor in self.sensors:
                if wanted is not None and sensor.name not in wanted:
                    continue
                result = await read_isolated(sensor, self.read_timeout)
                if isinstance(result, SensorFault):
                    records.append(fault_record(sensor.name, result, self.clock()))
                elif result:
                    records += [sample_record(s) for s in result]
        envelope = self.record_measured(records, urgent=True)  # the answer overtakes the backlog, as alarms do
        if envelope is not None:
            inbox.reported(applied.command.seq)
        return envelope

    @staticmethod
    def certify_new_key(command, old, new) -> bytes | None:
        """A TPM key's proof that it is in the same TPM as the one it replaces (TPM2_Certify by the attestation
        key, telemetry.rotation `key.next.certify`), None for a software key or when the TPM will not certify
        (the handover then goes without it: the lender lists the new key `software`, or refuses the handover
        where it requires hardware keys, rather than the device keeping a command it cannot answer)."""
        from durable.keystore import TpmKey, certify_tpm_key
        if not isinstance(new, TpmKey):
            return None
        try:
            return encode_certification(*certify_tpm_key(new, certify_data(command.device, old.kid, new.public_key,
                                                                            command.digest)))
        except DurableError as exc:
            log.error("the TPM did not certify the new key (%s): the handover goes without its certification", exc)
            return None

    def rotate(self, inbox: CommandInbox, applied: Applied) -> Envelope | None:
        """Answer rotate-key: a new key in the same key store, the handover signed by the old one, then the switch.

        The order is durable.keystore.DeviceKeys's: the new key is made and
        named as under way, the handover (telemetry.rotation) is appended with
        the old key as the very next seq, then the description switches and the
        old key is destroyed. A power cut anywhere leaves the old key in force
        with the command owed, or the new one with the handover in the chain.
        """
        keys, command = inbox.keys, applied.command
        if keys.rotated_by() == command.digest:  # switched already; a power cut came before `reported`
            inbox.reported(command.seq)
            return None
        old = self.identity
        try:
            new = keys.prepare(command.digest, self.recorder.seq, old)
        except DurableError as exc:   # no new key (a TPM refusing, a full disk): refused, signed, the old key kept
            log.error("key rotation refused: %s", exc)
            keys.discard(old)
            envelope = self.record_measured(outcome_records(command, Outcome.REFUSED, applied.at,
                                                            detail=f"no new key: {exc}"), urgent=True)
            if envelope is not None:
                inbox.reported(command.seq)
            return envelope
        records = handover_records(command, old.kid, new, applied.at, self.certify_new_key(command, old, new))
        clock = None
        if self.trusted_clock is not None:   # as record_measured and record date and stamp them
            instant = self.trusted_clock.now()
            records, clock = list(stamp(redate(records, instant), instant)), instant.statement()
        try:   # append, not record: the switch comes before anything else is signed (a drops or gap record)
            envelope = self.recorder.append(records, clock=clock, urgent=True)
        except (SpoolError, StateError) as exc:   # nothing was appended: the old key stays, the command owed
            log.error("cannot spool the key handover: %s; the rotation is retried at the next start", exc)
            keys.abandon(old)
            return None
        self.identity = self.recorder.identity = keys.complete(old, new, envelope.seq)
        log.info("key rotation: %s hands over to %s at seq %d", old.kid.hex(), new.kid.hex(), envelope.seq)
        inbox.reported(command.seq)
        self.recorder.report_drops()
        if self.uplink is not None:
            self.uplink.wake()
        return envelope

    def reconfigure(self, inbox: CommandInbox) -> None:
        """Put the lender's configuration in force now: new rules over the same sensors, and a new manifest.

        The rules keep what must survive (raised alarms, the modem identity,
        today's usage: RulesEngine.snapshot); the spool, the chain and the keys
        are not touched. The manifest declares the new rules digest.
        """
        self.rules_digest = inbox.rules_digest or self.rules_digest
        instant = self._now()
        if self.rules is not None:
            kinds = {name: spec.kind for name, spec in self.rules.sensors.items()}
            configured = inbox.configured(kinds)
            if configured is not None:
                settings, assets = configured
                self.rules = RulesEngine(assets, list(self.rules.sensors.values()), settings, start=instant,
                                         restore=self.rules.snapshot(), permits=self.rules.permits)
                log.info("the lender's configuration %s is in force", inbox.config_digest.hex())
        self.declare(instant)

    def declare(self, instant: Instant) -> None:
        """Sign the manifest and, when the lender's configuration is in force and agent.toml's rules differ, the mismatch."""
        self.emit([self.manifest(instant)], instant)
        if (self.commands is not None and self.commands.config is not None and self.local_rules_digest is not None
                and self.local_rules_digest != self.commands.rules_digest):
            log.warning("agent.toml's rules %s differ from the lender's configuration in force (%s): reported",
                        self.local_rules_digest, self.commands.rules_digest)
            self.record([Record(LOCAL_RULES, string=self.local_rules_digest, time=instant.trusted_wall)], instant)

    async def _fetch_commands(self) -> None:
        """Fetch the lender's /c and act on each pending command in order (the inbox refuses repeats).

        A fetch goes when the observed command notices (`Uplink.watch_commands`)
        name a command above the last applied one, at once again while a fetch
        moved the inbox on (an answer holds what fits `MAX_FETCH_ANSWER`), and
        otherwise every `command_poll` s, the fallback: every `OBSERVING_POLL`
        s at least while the observation is live. Only this loop fetches, so
        commands are acted on one at a time, in the lender's order.
        """
        due = asyncio.Event()

        def notice(newest: int) -> None:
            if newest > self.commands.last_seq:
                due.set()

        watch = asyncio.create_task(self.uplink.watch_commands(notice), name="command notices")
        try:
            while True:
                due.clear()
                before = self.commands.last_seq
                for raw in await self.uplink.fetch_commands(before):
                    await self.command(self.commands, raw)
                if self.commands.last_seq != before:
                    continue
                interval = max(self.command_poll, OBSERVING_POLL) if self.uplink.observing else self.command_poll
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await due.wait()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _poll(self, sensor, stop: asyncio.Event) -> None:
        while not stop.is_set():
            result = await read_isolated(sensor, self.read_timeout)
            if isinstance(result, SensorFault):
                log.warning("sensor %s: %s", sensor.name, result)
                self.record_measured([fault_record(sensor.name, result, self.clock())])
            elif result:
                self.record_measured([sample_record(s) for s in result])
                self._gnss_time(sensor)
                self.judge(result)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sensor.interval):
                    await stop.wait()

    async def _events(self, queue: asyncio.Queue[Sample]) -> None:
        while True:
            sample = await queue.get()
            self.record_measured([sample_record(sample)])
            self.judge([sample])

    # --- edge rules ---

    def _now(self) -> Instant:
        if self.trusted_clock is not None:
            return self.trusted_clock.now()
        wall = self.clock()
        return Instant(time.monotonic(), wall, True, "ntp")  # no trusted clock given: the host's clock is taken as is

    def emit(self, emissions: Sequence[Emission], instant: Instant) -> None:
        """Record what the rules emitted, one envelope each (an alarm envelope wakes the uplink)."""
        for emission in emissions:
            records = emission.records()
            if records:  # a manifest of a site without assets says nothing
                self.record(records, instant)
        if emissions and self.rules_state is not None and self.rules is not None:
            self.rules_state.save(self.rules.snapshot())

    def judge(self, samples: Sequence[Sample]) -> None:
        """Feed one reading's samples to the rules and record what they raise."""
        if self.rules is not None:
            instant = self._now()
            try:
                emissions = self.rules.observe(samples, instant)
            except Exception:  # a rule bug must not stop sampling: the reading itself is already recorded
                log.exception("rules failed on %s", [s.name for s in samples])
                return
            self.emit(emissions, instant)

    def modem_identity(self, *, imei: str | None = None, iccid: str | None = None) -> None:
        """Entry point for the modem health monitor: the IMEI and ICCID it read (a change raises an alarm)."""
        if self.rules is not None:
            instant = self._now()
            self.emit(self.rules.modem_identity(instant, imei=imei, iccid=iccid), instant)
            if self.rules_state is not None:  # a first enrollment emits nothing but must survive a power cut
                self.rules_state.save(self.rules.snapshot())

    def _gnss_time(self, sensor) -> None:
        """A GNSS fix's UTC is a time reference for the trusted clock."""
        if self.trusted_clock is None or not hasattr(sensor, "current_fix"):
            return
        try:
            fix = sensor.current_fix()
        except SensorFault:
            return
        if fix.utc is not None:  # the driver's fix times are time.monotonic (drivers.gnss default)
            self.trusted_clock.reference("gnss", fix.utc, age_s=max(0.0, time.monotonic() - fix.received_at))

    async def _rules_tick(self) -> None:
        """Time-driven rules every `rule_tick` seconds, and the lender's acks as they happen."""
        seen, saved = None, time.monotonic()
        while True:
            await asyncio.sleep(self.rule_tick)
            instant = self._now()
            emissions: list[Emission] = []
            exchange = getattr(self.uplink, "last_exchange", None)
            if exchange is not None and exchange is not seen:
                seen = exchange
                if exchange.result in (Result.DELIVERED, Result.NO_PROGRESS):  # the lender answered with an ack
                    emissions += self.rules.lender_contact(instant)
            try:
                emissions += self.rules.tick(instant)
            except Exception:  # a rule bug must not stop the other time-driven rules next time
                log.exception("rules tick failed")
            self.emit(emissions, instant)
            if self.rules_state is not None and time.monotonic() - saved >= 60:  # today's run time, at least
                self.rules_state.save(self.rules.snapshot())
                saved = time.monotonic()

    def manifest(self, instant: Instant) -> Manifest:
        """What the device declares at start: its assets and sensors, heartbeat interval and rules digest."""
        declared = {"heartbeat_s": self.heartbeat_s, "rules_digest": self.rules_digest}
        if self.rules is not None:
            return self.rules.manifest(instant, **declared)
        return Manifest((), instant, **declared)

    def heartbeat(self) -> Envelope | None:
        """Sign a heartbeat: `device.heartbeat`, the uptime in seconds (telemetry.manifest)."""
        instant = self._now()
        return self.record([Record(HEARTBEAT, value=round(max(0.0, instant.monotonic), 3), unit="s",
                                   time=instant.trusted_wall)], instant)

    async def _heartbeat(self) -> None:
        """Sign a heartbeat whenever `heartbeat_s` passes without any envelope signed."""
        while True:
            quiet = time.monotonic() - self.recorder.signed_at
            if quiet < self.heartbeat_s:
                await asyncio.sleep(self.heartbeat_s - quiet)
                continue
            if self.heartbeat() is None:  # not stored (counted as lost): try again a heartbeat later
                await asyncio.sleep(self.heartbeat_s)

    async def _checkpoint(self, every: float = 10.0) -> None:
        """Keep the state's acked watermark at "every seq up to here is acked or reported dropped"."""
        while True:
            await asyncio.sleep(every)
            self.checkpoint()

    def checkpoint(self) -> None:
        oldest, head = self.spool.oldest_seq(), self.spool.head()
        through = oldest - 1 if oldest is not None else (head.seq if head else 0)
        if through > self.state.acked_watermark:
            try:
                self.state.record_acked(through)
            except StateError as exc:  # only narrows a future spool-reset gap record; retried next time
                log.error("cannot save the acked watermark: %s", exc)

    async def _watchdog(self, interval: float) -> None:
        while True:
            _notify_systemd("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then stop every task and mark the shutdown clean."""
        if self.commands is not None and self.commands.keys is not None:  # a rotation a power cut interrupted
            head = self.spool.head()
            self.identity = self.commands.keys.settle(self.identity, head.seq if head else None)
        self.recorder = Recorder.start(self.identity, self.device, self.spool, self.state, now=self.clock(),
                                       binding=self.binding, tokens=self.tokens)
        log.info("agent %s: boot %d, resuming after seq %d", self.device, self.recorder.boot, self.recorder.seq)
        events: asyncio.Queue[Sample] = asyncio.Queue()
        listener = queue_listener(events)
        unsubscribe = [s.subscribe(listener) for s in self.sensors if hasattr(s, "subscribe")]
        tasks = [asyncio.create_task(self._poll(s, stop), name=f"poll {s.name}") for s in self.sensors if hasattr(s, "read")]
        tasks += [asyncio.create_task(s.watch(), name=f"watch {s.name}") for s in self.sensors if hasattr(s, "watch")]
        tasks.append(asyncio.create_task(self._events(events), name="events"))
        watchdog_interval = int(os.environ.get("WATCHDOG_USEC", "0")) / 2e6  # systemd: ping at half its interval
        if watchdog_interval > 0:
            tasks.append(asyncio.create_task(self._watchdog(watchdog_interval), name="watchdog"))
        tasks.append(asyncio.create_task(self._checkpoint(), name="checkpoint"))
        if self.modem_health is not None:
            tasks.append(asyncio.create_task(self.modem_health.run(self.record, self.modem_identity), name="modem health"))
        self.declare(self._now())
        if self.commands is not None:  # outcomes a power cut kept from the chain (agent.commands)
            for applied in self.commands.unreported():
                await self.answer(self.commands, applied)
        if self.rules is not None:
            tasks.append(asyncio.create_task(self._rules_tick(), name="rules"))
        tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        if self.uplink is not None:
            await self.uplink.start()
            tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))
            if self.commands is not None:
                tasks.append(asyncio.create_task(self._fetch_commands(), name="commands"))
        _notify_systemd("READY=1")
        self.started.set()
        try:
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopped}:  # every task runs until stopped: one that ends first is a failure
                if task.exception() is not None:
                    raise task.exception()
                if not stop.is_set():
                    raise RuntimeError(f"agent task {task.get_name()!r} ended on its own")
        finally:
            _notify_systemd("STOPPING=1")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for undo in unsubscribe:
                undo()
            if self.uplink is not None:
                await self.uplink.close()
            # drain pushes that arrived before the stop: they were accepted, so they are recorded
            while not events.empty():
                self.record([sample_record(events.get_nowait())])
            self.checkpoint()
            if self.rules_state is not None and self.rules is not None:
                self.rules_state.save(self.rules.snapshot())
            try:
                self.state.mark_clean_shutdown()
            except StateError as exc:  # the next start then reports a power loss: more said, nothing lost
                log.error("cannot mark the shutdown clean: %s", exc)
            log.info("agent %s stopped cleanly after seq %d", self.device, self.recorder.seq)
