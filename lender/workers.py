"""Several lender workers on one port: a supervisor that runs N `LenderServer` processes over a shared store.

`pledgewatch lender serve --store postgresql://… --workers N` runs this.
Each worker is a whole `LenderServer` (its own event loop, ingest thread,
store connections) bound to the same UDP port with SO_REUSEPORT, so the
kernel spreads devices over the workers by source address; workers on other
hosts behind a UDP load balancer are the same program against the same
database. Nothing a worker holds in memory is needed by another: the
evidence, the log's order and each device's OSCORE state are in PostgreSQL
(lender.evidence.postgres, lender.enrollment.shared).

The supervisor starts the first worker (which learns the port when it is
0), then the others on that port, and starts again at once any worker that
dies (SIGKILL, a crash): the kernel sends the dead worker's share of devices
to the living ones meanwhile, and what it had acked is committed. Workers
are forked from a forkserver that has imported the lender already, so a
restart takes a fraction of a second. SIGTERM to the supervisor stops them
all cleanly.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lender.exc import ServeError
from lender.untrusted import escape_logs

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0      # seconds for a worker to answer ready
RESTART_DELAY = 0.2       # seconds before a dead worker is started again (growing while they keep dying at once)
RESTART_DELAY_MAX = 10.0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What every worker serves: the data directory (keys), the store, the address, the request limits."""

    data_dir: Path
    store_url: str
    bind: tuple[str, int]
    insecure: bool = False
    max_body: int = 64 * 1024
    log_level: int = logging.WARNING
    require_hardware_key: bool | None = None   # serve --require-hardware-key (None: DATA/enroll/policy.toml)


def _worker_main(config: WorkerConfig, index: int, ready) -> None:
    """A worker process: serve until SIGTERM, telling the supervisor its port once it listens."""
    import asyncio

    from lender.server import LenderServer

    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s")
    escape_logs()  # a line written from an attacker's bytes stays one line that says what it is (lender.untrusted)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us by SIGTERM

    async def serve() -> None:
        server = LenderServer(config.data_dir, bind=config.bind, insecure=config.insecure, max_body=config.max_body,
                              store_url=config.store_url, reuse_port=True,
                              require_hardware_key=config.require_hardware_key)
        try:
            await server.start()
        except Exception as exc:
            ready.send(("failed", f"{type(exc).__name__}: {exc}"))
            return
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        ready.send(("ready", server.address[1], len(server.credentials)))
        try:
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(serve())


class WorkerGroup:
    """N worker processes serving one store on one port, each started again whenever it dies."""

    def __init__(self, config: WorkerConfig, workers: int) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.config = config
        self.count = workers
        self.port = config.bind[1]
        self.restarts = 0
        self.contexts = 0
        self._mp = multiprocessing.get_context("forkserver")
        self._mp.set_forkserver_preload(["lender.server", "lender.enrollment.shared", "lender.evidence.postgres"])
        self._processes: list[multiprocessing.Process | None] = [None] * workers
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.config.bind[0], self.port

    def pids(self) -> list[int]:
        """The living workers' process ids (what an operator, or a fault test, may kill)."""
        with self._lock:
            return [p.pid for p in self._processes if p is not None and p.is_alive()]

    def start(self) -> WorkerGroup:
        from lender.server import check_port_free

        check_port_free(*self.config.bind)
        try:
            self._launch(0)          # the first learns the port when it is 0; the others join it
            for index in range(1, self.count):
                self._launch(index)
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="lender-workers", daemon=True)
        self._watcher.start()
        return self

    def _launch(self, index: int) -> None:
        config = WorkerConfig(self.config.data_dir, self.config.store_url, (self.config.bind[0], self.port),
                              self.config.insecure, self.config.max_body, self.config.log_level,
                              self.config.require_hardware_key)
        receiver, sender = self._mp.Pipe(duplex=False)
        process = self._mp.Process(target=_worker_main, args=(config, index, sender), name=f"lender-worker-{index}",
                                   daemon=True)
        process.start()
        sender.close()
        try:
            if not receiver.poll(START_TIMEOUT):
                raise ServeError(f"lender worker {index} did not start within {START_TIMEOUT:.0f} s")
            message = receiver.recv()
        except EOFError:
            raise ServeError(f"lender worker {index} exited while starting (exit code {process.exitcode})") from None
        finally:
            receiver.close()
        if message[0] != "ready":
            process.join(5)
            raise ServeError(f"lender worker {index} could not start: {message[1]}")
        self.port = message[1]
        self.contexts = message[2]
        with self._lock:
            self._processes[index] = process

    def _watch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                sentinels = {p.sentinel: i for i, p in enumerate(self._processes) if p is not None}
            ended = multiprocessing.connection.wait(list(sentinels), timeout=0.5)
            for sentinel in ended:
                if self._stopping.is_set():
                    return
                index = sentinels[sentinel]
                with self._lock:
                    process, self._processes[index] = self._processes[index], None
                process.join()
                log.error("lender worker %d (pid %d) ended with %s; starting it again", index, process.pid,
                          _how(process.exitcode))
                delay = RESTART_DELAY
                while not self._stopping.is_set():
                    time.sleep(delay)
                    try:
                        self._launch(index)
                        self.restarts += 1
                        break
                    except ServeError as exc:
                        log.error("%s; trying again in %.1f s", exc, delay)
                        delay = min(delay * 2, RESTART_DELAY_MAX)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (each finishes its request and closes its connections); SIGKILL a straggler."""
        self._stopping.set()
        with self._lock:
            processes = [p for p in self._processes if p is not None]
            self._processes = [None] * self.count
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(5)

    def __enter__(self) -> WorkerGroup:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"signal {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"
