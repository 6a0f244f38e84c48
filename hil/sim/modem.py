"""hil.sim.modem — simulated cellular modems serving AT commands on pseudo-terminals.

A `ModemSimulator` owns the master side of a pseudo-terminal (`os.openpty`);
the code under test opens the slave path with pyserial exactly as it would
open ``/dev/ttyUSB2``. The simulator answers from its model's data table,
turns fault knobs, and records every command it receives with a timestamp.

    with ModemSimulator("rm520n", link=tmp_path / "modem") as sim:
        ...  # open sim.path (the stable symlink) with pyserial or AtChannel
        sim.knobs.cme_error = 10            # every command now fails: SIM not inserted
        sim.reboot(down_s=0.2)              # port vanishes, returns under the same link
        assert sim.commands()[-1] == "AT+CIMI"

From a shell, until Ctrl-C::

    python -m hil.sim.modem --model rm520n --link /tmp/modem

The simulator runs its own asyncio loop in a background thread, so it serves
synchronous tests, async tests and benchmarks alike; `astart()`/`astop()`
wrap start/stop for async code.

Faults
------
Knobs (`sim.knobs`, a `FaultKnobs`; set them at any time, they apply to the
next command — or only to commands matching `knobs.applies_to`, a regex):
``delay_s``, ``no_answer``, ``error``, ``cme_error``, ``cms_error``,
``garbage`` (bytes sent before a response), ``missing_final`` (the ``OK`` is
never sent), ``urc_mid_response`` (a URC between the response lines),
``fade_db_per_query`` (RSRP drops by that much each time the signal is
queried; at -140 dBm the modem loses registration).

Actions (methods): `emit_urc`, `urc_storm`, `reboot` (symlink removed, pty
closed; after `down_s` a new pty, the symlink back, and once a client has the
port open the model's boot URCs such as ``RDY``; commands get no answer until
then), `swap_sim` (new ICCID/IMSI plus the model's SIM URCs),
`lose_registration` / `regain_registration` (with ``+CEREG``/``+C5GREG`` URCs
when enabled), `set_signal`, `set_fix`.

Adding a model
--------------
What a model is made of (`ModemModel`, its answers and handlers, `Reply`,
`SimState`) is `hil.sim.model`; the models themselves are `hil.sim.models`.

Handlers run in the simulator's own thread, inside its asyncio loop: a
socket model may open real UDP sockets there (`asyncio.get_running_loop()`)
and announce received datagrams later with `ctx.sim.emit_urc(...)`. Keep
per-model state in `SimState.extra`; it is cleared on reboot, and anything
in it with a ``close()`` is closed.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import os
import re
import select
import signal
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from hil.sim.model import (
    CommandContext,
    CommandRefused,
    DataPrompt,
    GnssFix,
    ModemModel,
    Reply,
    SimState,
    error,
)
from hil.sim.models import MODELS

log = logging.getLogger(__name__)

CTRL_Z = 0x1A
ESC = 0x1B


# --- knobs and records ----------------------------------------------------------


@dataclass(slots=True)
class FaultKnobs:
    """Fault knobs; each applies to every command, or only to those matching `applies_to`."""

    delay_s: float = 0.0
    no_answer: bool = False
    error: bool = False
    cme_error: int | None = None
    cms_error: int | None = None
    garbage: bytes = b""
    missing_final: bool = False
    urc_mid_response: str | None = None
    fade_db_per_query: float = 0.0
    applies_to: str | None = None

    def applies(self, command: str) -> bool:
        return self.applies_to is None or re.search(self.applies_to, command, re.IGNORECASE) is not None

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, FaultKnobs.__dataclass_fields__[f.name].default)


@dataclass(frozen=True, slots=True)
class ReceivedCommand:
    """One command as the simulator received it; `at` is `time.monotonic()`."""

    at: float
    text: str


# --- the simulator -----------------------------------------------------------------


class ModemSimulator:
    """A simulated modem on a pseudo-terminal (see the module docstring)."""

    def __init__(self, model: ModemModel | str, *, link: str | os.PathLike[str] | None = None,
                 state: SimState | None = None, **state_overrides: object) -> None:
        self.model = resolve_model(model) if isinstance(model, str) else model
        self.state = state if state is not None else self.model.new_state(**state_overrides)
        self.knobs = FaultKnobs()
        self.link = Path(link) if link is not None else None
        self._received: list[ReceivedCommand] = []
        self._received_cv = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._master: int | None = None
        self._pty_path: str | None = None
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._writing = False
        self._attached = False
        self._poll: select.poll | None = None
        self._attach_timer: asyncio.TimerHandle | None = None
        self._busy = False  # a delayed reply is outstanding: later input waits, like a real modem
        self._data: tuple[DataPrompt, str] | None = None  # collecting data after "> " for this command
        self._booting = False  # after a reboot, until the boot URCs went out
        self._boot_delay = 0.0
        self._generation = 0  # bumps on reboot: stale timers of the old pty do nothing
        self._storm_tasks: set[asyncio.Task[None]] = set()
        self.reboots = 0

    # -- lifecycle ------------------------------------------------------------

    @property
    def path(self) -> str:
        """The path to open: the stable symlink if one was given, else the current pty."""
        if self.link is not None:
            return str(self.link)
        if self._pty_path is None:
            raise RuntimeError("simulator not started: call start() first")
        return self._pty_path

    @property
    def pty_path(self) -> str | None:
        """The current pseudo-terminal slave (changes on every reboot); None while down."""
        return self._pty_path

    @property
    def attached(self) -> bool:
        """True while some client has the port open."""
        return self._attached

    def start(self) -> ModemSimulator:
        if self._thread is not None:
            return self
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name=f"modem-sim {self.model.key}", daemon=True)
        self._thread.start()
        if not self._ready.wait(5.0):
            raise RuntimeError(f"modem simulator {self.model.key} did not start within 5 s")
        if self._pty_path is None:
            raise RuntimeError(f"modem simulator {self.model.key} failed to create its pseudo-terminal")
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        self._thread = None

    async def astart(self) -> ModemSimulator:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> ModemSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ModemSimulator:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._open_pty()
        except OSError as exc:
            log.error("modem simulator %s: cannot create a pseudo-terminal: %s", self.model.key, exc)
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for task in list(self._storm_tasks):
                task.cancel()
            self._close_pty()
            loop.close()
            self._loop = None

    # -- recorder -----------------------------------------------------------------

    @property
    def received(self) -> tuple[ReceivedCommand, ...]:
        with self._received_cv:
            return tuple(self._received)

    def commands(self) -> list[str]:
        """The text of every command received so far, in order."""
        with self._received_cv:
            return [r.text for r in self._received]

    def clear_received(self) -> None:
        with self._received_cv:
            self._received.clear()

    def wait_for_command(self, pattern: str, timeout: float = 5.0) -> ReceivedCommand:
        """Block until a command matching `pattern` (regex, case-insensitive) has been received."""
        rx = re.compile(pattern, re.IGNORECASE)
        deadline = time.monotonic() + timeout
        with self._received_cv:
            while True:
                for r in self._received:
                    if rx.search(r.text):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"simulator {self.model.key} received no command matching {pattern!r} "
                                       f"within {timeout}s; got {[r.text for r in self._received][-5:]}")
                self._received_cv.wait(left)

    def wait_attached(self, timeout: float = 5.0) -> None:
        """Block until a client has the port open."""
        deadline = time.monotonic() + timeout
        while not self._attached:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no client opened simulator {self.model.key} within {timeout}s")
            time.sleep(0.002)

    # -- actions (callable from any thread) ----------------------------------------

    def emit_urc(self, *lines: str) -> None:
        """Send URC lines now (lost if no client has the port open, like on real hardware)."""
        self._call(lambda: [self._send_urc(line) for line in lines])

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are: an answer that is not text lines (AT+CARECV's payload)."""
        self._call(lambda: self._write(data))

    def urc_storm(self, line: str, count: int, burst: int = 64) -> None:
        """Send `count` copies of a URC, `burst` at a time, letting commands interleave."""
        if count < 0 or burst < 1:
            raise ValueError(f"URC storm needs count >= 0 and burst >= 1, got {count}, {burst}")

        def begin() -> None:
            async def storm() -> None:
                left = count
                while left > 0:
                    n = min(burst, left)
                    self._write(b"".join(b"\r\n" + line.encode() + b"\r\n" for _ in range(n)))
                    left -= n
                    await asyncio.sleep(0)
            task = asyncio.get_running_loop().create_task(storm())
            self._storm_tasks.add(task)
            task.add_done_callback(self._storm_tasks.discard)
        self._call(begin)

    def reboot(self, down_s: float = 0.2, ready_s: float = 0.1, after_s: float = 0.0) -> None:
        """The port disappears (now, or `after_s` from now) and returns `down_s` later.

        With a link, the symlink is removed when the port goes and recreated,
        pointing at the new pty, when the modem is back — like a udev symlink.
        The model's boot URCs (``RDY`` ...) follow `ready_s` after a client
        has the new port open; until then commands get no answer. (Keep
        `ready_s` well above zero: pyserial flushes a port's input at the end
        of `open()`, so URCs sent while a client is still inside `open()` are
        lost — true of real modems too, whose RDY comes seconds after the port.)
        """
        if after_s > 0:
            def later() -> None:
                assert self._loop is not None
                gen = self._generation
                self._loop.call_later(after_s, lambda: gen == self._generation and self._reboot(down_s, ready_s))
            self._call(later)
            return
        self._call(lambda: self._reboot(down_s, ready_s))

    def swap_sim(self, iccid: str, imsi: str) -> None:
        """Another SIM is now in the slot: new ICCID and IMSI, and the model's SIM URCs."""
        def swap() -> None:
            self.state.iccid, self.state.imsi, self.state.sim_present = iccid, imsi, True
            for line in self.model.sim_swap_urcs:
                self._send_urc(line)
        self._call(swap)

    def lose_registration(self, stat: int = 2) -> None:
        """The network drops the modem: <stat> becomes `stat` (2 searching, 3 denied, 0 idle)."""
        def lose() -> None:
            self.state.registered = False
            self.state.lost_stat = stat
        self._call(lambda: self.changing_registration(lose))

    def regain_registration(self) -> None:
        def regain() -> None:
            self.state.registered = True
        self._call(lambda: self.changing_registration(regain))

    def set_signal(self, **values: float) -> None:
        """Set radio values (rsrp, rsrq, sinr, rssi, nr_rsrp, nr_rsrq, nr_sinr)."""
        allowed = {"rsrp", "rsrq", "sinr", "rssi", "nr_rsrp", "nr_rsrq", "nr_sinr"}
        bad = set(values) - allowed
        if bad:
            raise ValueError(f"set_signal takes {sorted(allowed)}, not {sorted(bad)}")
        self._call(lambda: [setattr(self.state, k, float(v)) for k, v in values.items()])

    def set_fix(self, fix: GnssFix | None) -> None:
        self._call(lambda: setattr(self.state, "fix", fix))

    def _call(self, fn: Callable[[], object]) -> None:
        """Run `fn` in the simulator's thread and wait for it (runs inline when already there)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"simulator {self.model.key} is not running: start() it first")
        if threading.current_thread() is self._thread:
            fn()
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                fn()
                done.set_result(None)
            except BaseException as exc:  # hand the error to the caller's thread
                done.set_exception(exc)
        loop.call_soon_threadsafe(run)
        done.result(5.0)

    # -- the pseudo-terminal ---------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no CR/LF translation before pyserial opens it
            path = os.ttyname(slave)
        finally:
            os.close(slave)  # the simulator keeps no slave open: a hang-up then means "no client"
        flags = fcntl.fcntl(master, fcntl.F_GETFL)
        fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self._master, self._pty_path = master, path
        self._inbuf.clear()
        self._outbuf.clear()
        self._writing = False
        self._attached = False
        self._busy = False
        self._data = None
        self._poll = select.poll()
        self._poll.register(master, select.POLLIN)
        if self.link is not None:
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(path, tmp)
            os.replace(tmp, self.link)
        self._watch_attach()

    def _close_pty(self) -> None:
        loop, master = self._loop, self._master
        if self._attach_timer is not None:
            self._attach_timer.cancel()
            self._attach_timer = None
        if master is not None:
            if loop is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(master)
                with contextlib.suppress(Exception):
                    loop.remove_writer(master)
            with contextlib.suppress(OSError):
                os.close(master)
        self._master = None
        self._pty_path = None
        self._attached = False
        if self.link is not None and self.link.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    def _watch_attach(self) -> None:
        """Poll for a client opening the slave side (the master sees POLLHUP while nobody has it open)."""
        self._attach_timer = None
        master, poll = self._master, self._poll
        if master is None or poll is None or self._loop is None:
            return
        events = poll.poll(0)
        if events and events[0][1] & select.POLLHUP and not events[0][1] & select.POLLIN:
            self._attach_timer = self._loop.call_later(0.002, self._watch_attach)
            return
        self._attached = True
        self._loop.add_reader(master, self._readable)
        if self._booting:
            gen = self._generation
            self._loop.call_later(self._boot_delay, self._finish_boot, gen)

    def _readable(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                log.warning("modem simulator %s: read failed: %s", self.model.key, exc)
            data = b""
        if not data:  # the client closed the port
            assert self._loop is not None
            self._loop.remove_reader(master)
            if self._writing:
                self._loop.remove_writer(master)
                self._writing = False
            self._attached = False
            self._inbuf.clear()
            self._outbuf.clear()
            self._data = None
            self._watch_attach()
            return
        self._inbuf += data
        self._process_input()

    def _write(self, data: bytes) -> None:
        # Nobody has the port open: the bytes are lost, as on a real modem's USB port
        # (and pyserial flushes a port's input when it opens it anyway).
        if self._master is None or not data or not self._attached:
            return
        self._outbuf += data
        if not self._writing:
            self._flush()

    def _flush(self) -> None:
        master = self._master
        if master is None:
            return
        while self._outbuf:
            try:
                n = os.write(master, self._outbuf)
            except BlockingIOError:
                if not self._writing and self._loop is not None:
                    self._writing = True
                    self._loop.add_writer(master, self._writable)
                return
            except OSError as exc:
                log.debug("modem simulator %s: write failed: %s", self.model.key, exc)
                self._outbuf.clear()
                return
            del self._outbuf[:n]
        if self._writing and self._loop is not None:
            self._writing = False
            self._loop.remove_writer(master)

    def _writable(self) -> None:
        self._flush()

    # -- command processing ---------------------------------------------------------

    def _process_input(self) -> None:
        buf = self._inbuf
        while buf and not self._busy:
            if self._data is not None:
                if not self._take_data():
                    return
                continue
            cr = buf.find(b"\r")
            if cr < 0:
                if len(buf) > 4096:  # a real modem's command buffer overflows: ERROR, start over
                    buf.clear()
                    self._write(b"\r\nERROR\r\n")
                return
            raw = bytes(buf[:cr])
            del buf[: cr + 1]
            text = raw.decode("ascii", errors="replace").strip("\n").strip()
            if text:
                self._command(text, raw)

    def _take_data(self) -> bool:
        assert self._data is not None
        prompt, text = self._data
        buf = self._inbuf
        if prompt.length is not None:
            if len(buf) < prompt.length:
                return False
            payload = bytes(buf[: prompt.length])
            del buf[: prompt.length]
        else:
            end = next((i for i, b in enumerate(buf) if b in (CTRL_Z, ESC)), -1)
            if end < 0:
                return False
            payload = bytes(buf[:end])
            cancelled = buf[end] == ESC
            del buf[: end + 1]
            if cancelled:
                self._data = None
                self._write(b"\r\nOK\r\n")
                return True
        self._data = None
        try:
            reply = prompt.then(payload)
        except CommandRefused as exc:
            reply = exc.reply
        self._send_reply(text, reply, applies=self.knobs.applies(text))
        return True

    def _command(self, text: str, raw: bytes) -> None:
        with self._received_cv:
            self._received.append(ReceivedCommand(time.monotonic(), text))
            self._received_cv.notify_all()
        knobs = self.knobs
        applies = knobs.applies(text)
        if self._booting or (applies and knobs.no_answer):
            return  # a hung or booting modem does not even echo
        if self.state.echo:
            self._write(raw + b"\r")
        if applies and knobs.error:
            reply = error()
        elif applies and knobs.cme_error is not None:
            reply = error(knobs.cme_error)
        elif applies and knobs.cms_error is not None:
            reply = error(knobs.cms_error, cms=True)
        else:
            reply = self._dispatch_chain(text)
        self._send_reply(text, reply, applies=applies)

    def _dispatch_chain(self, text: str) -> Reply:
        """``AT+CSQ;+CEREG?`` runs each part; the first failure ends the line (V.250 §5.2.1)."""
        parts = _split_chain(text)
        if len(parts) == 1:
            return self._dispatch(text)
        lines: list[str] = []
        for part in parts:
            reply = self._dispatch(part)
            if reply.prompt is not None:
                return error()
            lines.extend(reply.lines)
            if reply.final != "OK":
                return Reply(tuple(lines), reply.final)
        return Reply(tuple(lines))

    def _dispatch(self, text: str) -> Reply:
        model, state = self.model, self.state
        key = text.upper()
        if key in model.signal_commands and self.knobs.fade_db_per_query and self.knobs.applies(text):
            self._fade(self.knobs.fade_db_per_query)
        answer = model.answers.get(key)
        if answer is not None:
            if not answer:
                return Reply()
            try:
                view = state.view()
                view["model"] = model
                lines = answer(state) if callable(answer) else tuple(t.format_map(view) for t in answer)
            except CommandRefused as exc:
                return exc.reply
            return Reply(tuple(lines))
        for rx, handler in model.handlers:
            m = rx.fullmatch(text)
            if m is not None:
                try:
                    return handler(CommandContext(text, m, state, self))
                except CommandRefused as exc:
                    return exc.reply
        return error()

    def _send_reply(self, text: str, reply: Reply, *, applies: bool) -> None:
        knobs = self.knobs
        out = bytearray()
        if applies and knobs.garbage:
            out += knobs.garbage
        lines = list(reply.lines)
        if applies and knobs.urc_mid_response is not None:
            lines.insert(1 if lines else 0, knobs.urc_mid_response)
        if lines:
            out += b"\r\n" + "\r\n".join(lines).encode() + b"\r\n"
        if reply.prompt is not None:
            out += b"\r\n> "
        elif reply.final is not None and not (applies and knobs.missing_final):
            out += b"\r\n" + reply.final.encode() + b"\r\n"
        for urc in reply.after:
            out += b"\r\n" + urc.encode() + b"\r\n"
        delay = knobs.delay_s if applies else 0.0
        if delay > 0 and self._loop is not None:
            self._busy = True
            gen = self._generation
            self._loop.call_later(delay, self._deliver_delayed, gen, bytes(out), reply, text)
            return
        self._deliver(bytes(out), reply, text)

    def _deliver_delayed(self, generation: int, out: bytes, reply: Reply, text: str) -> None:
        if generation != self._generation:
            return
        self._busy = False
        self._deliver(out, reply, text)
        self._process_input()

    def _deliver(self, out: bytes, reply: Reply, text: str) -> None:
        self._write(out)
        if reply.prompt is not None:
            self._data = (reply.prompt, text)
        if reply.action is not None:
            reply.action(self)

    # -- state changes -------------------------------------------------------------------

    def _send_urc(self, line: str) -> None:
        self._write(b"\r\n" + line.encode() + b"\r\n")

    def changing_registration(self, change: Callable[[], object]) -> None:
        """Apply `change` to the state, then send +CEREG/+C5GREG URCs for each <stat> that changed."""
        before = (self.state.eps_stat, self.state.nr_stat)
        change()
        self._registration_urcs(before)

    def _registration_urcs(self, before: tuple[int, int]) -> None:
        s = self.state
        for old, n, stat, name, tac, ci, act in (
                (before[0], s.cereg_n, s.eps_stat, "+CEREG", f"{s.tac & 0xFFFF:04X}",
                 f"{s.cell_id & 0xFFFFFFF:08X}", 13 if s.rat == "NR5G-NSA" else 7),
                (before[1], s.c5greg_n, s.nr_stat, "+C5GREG", f"{s.nr_tac:06X}", f"{s.nr_cell_id:09X}", 11)):
            if n <= 0 or stat == old:
                continue
            if n >= 2 and stat in (1, 5):
                self._send_urc(f'{name}: {stat},"{tac}","{ci}",{act}')
            else:
                self._send_urc(f"{name}: {stat}")

    def _fade(self, step: float) -> None:
        s = self.state
        s.rsrp = max(-140.0, s.rsrp + step)
        s.nr_rsrp = max(-140.0, s.nr_rsrp + step)
        s.rssi = max(-113.0, s.rssi + step)
        s.sinr = max(-20.0, s.sinr + step)
        s.nr_sinr = max(-20.0, s.nr_sinr + step)
        if s.registered and (s.nr_rsrp if s.rat == "NR5G-SA" else s.rsrp) <= -140.0:
            def lost() -> None:
                s.registered = False
                s.lost_stat = 2
            self.changing_registration(lost)

    def _reboot(self, down_s: float, ready_s: float) -> None:
        self.reboots += 1
        self._generation += 1
        self._close_pty()
        fresh = self.model.new_state()
        s = self.state
        # What survives a reboot: the SIM, the network, the radio. What does not: session settings.
        s.echo, s.cmee, s.cfun = fresh.echo, fresh.cmee, 1
        s.creg_n, s.cereg_n, s.c5greg_n, s.cops_format = 0, 0, 0, 0
        s.gnss_on, s.connected = False, False
        for value in s.extra.values():  # a model's sockets and the like die with the modem
            close = getattr(value, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
        s.extra.clear()
        self._booting = True
        self._boot_delay = ready_s
        assert self._loop is not None
        gen = self._generation
        self._loop.call_later(down_s, self._come_back, gen)

    def _come_back(self, generation: int) -> None:
        if generation != self._generation:
            return
        try:
            self._open_pty()
        except OSError as exc:
            log.error("modem simulator %s: cannot recreate its pseudo-terminal: %s", self.model.key, exc)

    def _finish_boot(self, generation: int) -> None:
        if generation != self._generation or not self._booting:
            return
        self._booting = False
        for line in self.model.boot_urcs:
            self._send_urc(line)


def _split_chain(text: str) -> list[str]:
    parts, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    first, rest = parts[0], [p.strip() for p in parts[1:] if p.strip()]
    return [first] + [p if p.upper().startswith("AT") else "AT" + p for p in rest]


def resolve_model(key: str) -> ModemModel:
    """The model registered under `key` in `hil.sim.models.MODELS`."""
    try:
        return MODELS[key.lower()]
    except KeyError:
        raise KeyError(f"no simulated modem model {key!r}; known: {', '.join(sorted(MODELS))}") from None


# --- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.sim.modem",
                                     description="Serve a simulated modem on a pseudo-terminal until Ctrl-C.")
    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="which modem to simulate")
    parser.add_argument("--link", help="stable symlink to the pseudo-terminal (default: a temporary path)")
    parser.add_argument("--rat", choices=("LTE", "NR5G-SA", "NR5G-NSA"), help="radio access technology")
    parser.add_argument("--no-echo", action="store_true", help="start with echo off (ATE0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    link = args.link or os.path.join(tempfile.mkdtemp(prefix="modem-sim-"), "at")
    overrides: dict[str, object] = {}
    if args.rat:
        overrides["rat"] = args.rat
    if args.no_echo:
        overrides["echo"] = False
    sim = ModemSimulator(args.model, link=link, **overrides)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with sim:
        print(f"{sim.model.manufacturer} {sim.model.model} simulator: {sim.path} -> {sim.pty_path}", flush=True)
        stop.wait()
        print(f"received {len(sim.received)} command(s); stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
