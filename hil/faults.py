"""hil.faults — fault injection, one line each in a scenario, and the log of what was injected when.

    bench.power.cut()                           # the agent loses power: SIGKILL, then it boots again
    bench.network.partition(for_s=30)           # nothing gets through for 30 s
    bench.network.impair(loss=0.3, jitter_s=0.5) # a flaky link (until heal())
    bench.modem.hang()                          # the modem stops answering AT commands
    bench.relay.power_cycle()                   # the modem's power relay: off, then on
    bench.disk.fill()                           # the spool's disk is full (until free())
    bench.clock.jump(+86400)                    # the gateway's wall clock jumps a day

Each injector works on whatever the environment file put behind it: the
simulated modem's knobs or (on a real bench) only its power relay; a tmpfs or
loop-mounted image when the rig runs as root, else a file-size quota
(RLIMIT_FSIZE set on the agent's process with prlimit(2)); the rig's clock
shim in the agent's interpreter. Every injection lands in the `FaultLog`,
which the report draws on the scenario's timeline.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hil.env import DiskSpec, PowerRelaySpec
from hil.exc import FaultError
from hil.netem import UP, Impairment, UdpProxy
from hil.processes import AgentProcess

log = logging.getLogger(__name__)


# --- the log ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """One injected fault: `start`/`end` are `time.time()`; `end` None for an instant (or one never ended)."""

    kind: str
    start: float
    end: float | None
    detail: str
    instant: bool = False


class FaultLog:
    """Every fault of one scenario, in order (thread-safe: partitions end on a timer)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: list[FaultRecord] = []
        self._open: dict[str, int] = {}

    def instant(self, kind: str, detail: str = "") -> None:
        now = self._clock()
        with self._lock:
            self._records.append(FaultRecord(kind, now, now, detail, instant=True))
        log.info("fault: %s %s", kind, detail)

    def begin(self, kind: str, detail: str = "", *, planned_s: float | None = None) -> None:
        """A fault that lasts: ended by `end(kind)`, or at `planned_s` if given."""
        now = self._clock()
        with self._lock:
            self._close_locked(kind, now)
            end = now + planned_s if planned_s is not None else None
            self._records.append(FaultRecord(kind, now, end, detail))
            self._open[kind] = len(self._records) - 1
        log.info("fault: %s begins %s", kind, detail)

    def end(self, kind: str) -> None:
        with self._lock:
            self._close_locked(kind, self._clock())

    def end_all(self) -> None:
        with self._lock:
            for kind in list(self._open):
                self._close_locked(kind, self._clock())

    def _close_locked(self, kind: str, now: float) -> None:
        index = self._open.pop(kind, None)
        if index is not None:
            record = self._records[index]
            end = now if record.end is None else min(record.end, now)  # healed before its planned end
            self._records[index] = FaultRecord(record.kind, record.start, end, record.detail)

    def records(self) -> list[FaultRecord]:
        with self._lock:
            return list(self._records)


# --- the agent's power --------------------------------------------------------------------------


class AgentPower:
    """The gateway's power as the agent sees it: a cut is SIGKILL, then the agent starts again."""

    def __init__(self, agent: AgentProcess, faults: FaultLog, *, before_start: Callable[[], None] = lambda: None,
                 after_cut: Callable[[], None] = lambda: None) -> None:
        self.agent = agent
        self.faults = faults
        self._before_start = before_start
        self._after_cut = after_cut

    @property
    def cuts(self) -> int:
        return self.agent.power_cuts

    def cut(self, off_s: float = 0.0) -> None:
        """Pull the plug (no clean shutdown), wait `off_s`, power on again."""
        self.faults.instant("power-cut", f"agent pid {self.agent.pid} killed" + (f", off {off_s:g} s" if off_s else ""))
        self.agent.kill()
        self.agent.power_cuts += 1
        self._after_cut()
        if off_s:
            time.sleep(off_s)
        self._before_start()
        self.agent.start()


# --- the network path ----------------------------------------------------------------------------


class NetworkFaults:
    """Faults on the path between agent and lender, through the rig's UDP proxy (`hil.netem`)."""

    def __init__(self, proxy: UdpProxy | None, faults: FaultLog) -> None:
        self.proxy = proxy
        self.faults = faults

    def _need(self) -> UdpProxy:
        if self.proxy is None:
            raise FaultError("this bench has no network proxy ([network] kind = 'direct'): network faults need 'proxy'")
        return self.proxy

    def impair(self, impairment: Impairment | None = None, **settings: float) -> None:
        """Degrade both directions (an `Impairment`, or its fields: loss, delay_s, jitter_s, duplicate, reorder)."""
        proxy = self._need()
        proxy.impair(impairment, **settings)
        self.faults.begin("link-impaired", proxy.impairment(UP).describe())

    def partition(self, for_s: float | None = None, *, direction: str = "both") -> None:
        """Nothing gets through (`direction` 'up', 'down' or 'both') for `for_s` seconds, or until `heal()`."""
        self._need().partition(for_s, direction=direction)
        what = "no link" if direction == "both" else f"{direction}link lost"
        self.faults.begin("partition", what + (f" for {for_s:g} s" if for_s else ""), planned_s=for_s)

    def heal(self) -> None:
        """A clean link again: ends every partition and impairment."""
        if self.proxy is None:
            return
        self.proxy.heal()
        self.faults.end("link-impaired")
        self.faults.end("partition")

    def uploads(self) -> int:
        """Datagrams the agent has sent towards the lender so far (a sign that an upload is under way)."""
        return self._need().stats()[UP].received

    def wait_for_upload(self, timeout: float = 30.0) -> None:
        """Return once the agent sends a datagram towards the lender (an upload is in flight)."""
        seen = self.uploads()
        deadline = time.monotonic() + timeout
        while self.uploads() == seen:
            if time.monotonic() > deadline:
                raise FaultError(f"the agent sent nothing towards the lender within {timeout} s")
            time.sleep(0.005)


# --- the modem --------------------------------------------------------------------------------


class ModemFaults:
    """Faults of the modem itself, through the simulator's knobs (a real modem has none: use the relay)."""

    def __init__(self, simulator, faults: FaultLog, *, kind: str) -> None:
        self.simulator = simulator  # hil.sim.modem.ModemSimulator, or None on a real modem
        self.faults = faults
        self.kind = kind

    def _need(self):
        if self.simulator is None:
            raise FaultError(f"the modem on this bench ({self.kind}) has no fault knobs; use the power relay")
        return self.simulator

    def hang(self) -> None:
        """The modem stops answering anything (firmware hung); only a power cycle clears it."""
        self._need().knobs.no_answer = True
        self.faults.begin("modem-hang", "no answer to any AT command")

    def clear(self) -> None:
        if self.simulator is not None:
            self.simulator.knobs.reset()
        self.faults.end("modem-hang")


class PowerRelay:
    """The modem's power relay: a real relay on a GPIO pin, or the simulated modem's power."""

    def __init__(self, spec: PowerRelaySpec, faults: FaultLog, *, simulator=None,
                 after_power_on: Callable[[], None] = lambda: None) -> None:
        self.spec = spec
        self.faults = faults
        self.simulator = simulator
        self._after_power_on = after_power_on
        self._device = None
        self.cycles = 0

    def _output(self):
        if self._device is None:
            from gpiozero import OutputDevice  # only a real bench drives a pin
            self._device = OutputDevice(self.spec.pin, active_high=self.spec.active_high, initial_value=True)
        return self._device

    def power_cycle(self, off_s: float | None = None) -> None:
        """Power off, wait, power on: the last rung of the recovery ladder (clears any hang)."""
        off_s = self.spec.off_s if off_s is None else off_s
        self.faults.instant("modem-power-cycle", f"relay off {off_s:g} s")
        self.cycles += 1
        if self.spec.kind == "gpio":
            device = self._output()
            device.off()
            time.sleep(off_s)
            device.on()
        else:
            self.simulator.knobs.reset()  # a power cycle clears whatever the firmware was stuck in
            self.simulator.reboot(down_s=off_s)
            time.sleep(off_s)
        self.faults.end("modem-hang")
        self._after_power_on()

    def close(self) -> None:
        if self._device is not None:
            self._device.close()
            self._device = None


# --- the spool's disk -------------------------------------------------------------------------------


class DiskFull:
    """Makes the filesystem under the agent's state directory full, and frees it again.

    `prepare()` (before the agent starts) mounts a size-limited filesystem on
    the state directory: tmpfs or a loop-mounted ext4 image, as root. Without
    root (or with kind 'fsize-quota') the disk is full *for the agent's
    process*: `fill()` lowers its RLIMIT_FSIZE so no file can grow, which is
    what the spool sees on a full disk (SQLITE_FULL / EFBIG).
    """

    def __init__(self, spec: DiskSpec, state_dir: Path, faults: FaultLog, *, agent: AgentProcess | None = None) -> None:
        self.spec = spec
        self.state_dir = Path(state_dir)
        self.faults = faults
        self.agent = agent
        self.method = self._choose(spec.kind)
        self._mounted = False
        self._image: Path | None = None
        self._saved_limit: tuple[int, int] | None = None
        self.filled = False

    @staticmethod
    def _choose(kind: str) -> str:
        if kind == "auto":
            return "tmpfs" if os.geteuid() == 0 else "fsize-quota"
        return kind

    def prepare(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.method == "tmpfs":
            self._mount(["mount", "-t", "tmpfs", "-o", f"size={self.spec.size_bytes},mode=0700", "tmpfs",
                         str(self.state_dir)])
        elif self.method == "loop":
            self._image = self.state_dir.with_name(self.state_dir.name + ".img")
            with open(self._image, "wb") as image:
                image.truncate(self.spec.size_bytes)
            _run(["mkfs.ext4", "-q", "-F", str(self._image)])
            self._mount(["mount", "-o", "loop", str(self._image), str(self.state_dir)])
            os.chmod(self.state_dir, 0o700)

    def _mount(self, argv: list[str]) -> None:
        _run(argv)
        self._mounted = True

    def fill(self) -> None:
        """No more space: every write that needs a new block fails (ENOSPC, or EFBIG under the quota)."""
        if self.method == "fsize-quota":
            if self.agent is None or not self.agent.running:
                raise FaultError("the file-size quota applies to the agent's process, which is not running")
            self._saved_limit = resource.prlimit(self.agent.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(self.agent.pid, resource.RLIMIT_FSIZE, (1, self._saved_limit[1]))
        else:
            filler = self.state_dir / ".hil-filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                for size in (1 << 20, 1 << 12, 1):  # down to the last free byte
                    piece = b"\0" * size
                    while True:
                        try:
                            if os.write(fd, piece) < size:
                                break
                        except OSError as exc:
                            if exc.errno != errno.ENOSPC:
                                raise FaultError(f"cannot fill {self.state_dir}: {exc}") from exc
                            break
            finally:
                os.close(fd)
        self.filled = True
        self.faults.begin("disk-full", f"{self.method} on the spool's directory")

    def free(self) -> None:
        """Space again (the filler removed, or the quota lifted)."""
        if self.method == "fsize-quota":
            if self._saved_limit is not None and self.agent is not None and self.agent.running:
                resource.prlimit(self.agent.pid, resource.RLIMIT_FSIZE, self._saved_limit)
            self._saved_limit = None
        else:
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / ".hil-filler").unlink()
        self.filled = False
        self.faults.end("disk-full")

    def release(self) -> None:
        """Unmount (the agent must be stopped); safe to call twice."""
        if self._mounted:
            _run(["umount", str(self.state_dir)], check=False)
            self._mounted = False
        if self._image is not None:
            with contextlib.suppress(FileNotFoundError):
                self._image.unlink()
            self._image = None


def _run(argv: list[str], check: bool = True) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FaultError(f"`{' '.join(argv)}` failed: {exc}") from exc
    if check and result.returncode != 0:
        raise FaultError(f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()}")


# --- the wall clock -----------------------------------------------------------------------------


class ClockJump:
    """Jumps the agent's wall clock (time.time) through the rig's clock shim; monotonic time is untouched.

    The shim (`hil/clockshim/sitecustomize.py`, first on the agent's
    PYTHONPATH) adds the offset in `offset_file` to `time.time()`, re-reading
    the file whenever it changes, so a jump applies at once, even across
    power cuts, like an RTC that was set wrong.
    """

    def __init__(self, offset_file: Path, faults: FaultLog) -> None:
        self.offset_file = Path(offset_file)
        self.faults = faults
        self.offset = 0.0
        self._write()

    def _write(self) -> None:
        temporary = self.offset_file.with_name(self.offset_file.name + ".new")
        temporary.write_text(f"{self.offset!r}\n")
        os.replace(temporary, self.offset_file)

    def jump(self, seconds: float) -> None:
        """Move the wall clock by `seconds` (negative: back in time)."""
        self.offset += seconds
        self._write()
        self.faults.instant("clock-jump", f"{seconds:+g} s (offset now {self.offset:+g} s)")

    def reset(self) -> None:
        if self.offset:
            self.jump(-self.offset)
