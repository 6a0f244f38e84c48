"""The console as a running service: the watcher, the webhook dispatcher and the web app, served by uvicorn.

`Console` wires them and nothing else: `lender.console.live.Watcher` keeps
the portfolio current and fills the webhook outbox, `webhooks.Dispatcher`
empties it, `app.create_app` answers HTTP. `pledgewatch lender web` runs one
on its own; `pledgewatch lender serve --http HOST:PORT` runs one in the CoAP
server's event loop (lender.cli). Either prints ``console: http://HOST:PORT/``
once it listens.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from durable.exc import KeyFileExistsError
from durable.files import create_private
from durable.keyfile import create_key, read_key
from lender.console.app import Broadcaster, ConsoleState, create_app
from lender.console.live import Watcher
from lender.console.portfolio import Portfolio
from lender.console.records import ConsoleRecords
from lender.console.webhooks import KEY_FILE, MAX_BACKOFF_S, Dispatcher, check_url
from lender.evidence.risks import MISSED_HEARTBEATS
from lender.evidence.stores import open_store
from lender.exc import ConsoleError

log = logging.getLogger(__name__)

METRICS_TOKEN_FILE = "metrics.token"
DEFAULT_BIND = "127.0.0.1:8080"


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """How a console runs: where its data is, where it listens, whom it tells."""

    data_dir: Path
    store_url: str | None = None  # the evidence in PostgreSQL (`--store postgresql://...`); None: SQLite in data_dir
    host: str = "127.0.0.1"
    port: int = 8080
    webhooks: tuple[str, ...] = ()
    tiles: str | None = None
    missed_heartbeats: float = MISSED_HEARTBEATS
    poll_s: float = 1.0
    public: bool = False          # allow a non-loopback address (behind TLS: --tls-cert, or a proxy)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    forwarded_allow_ips: str | None = None
    webhook_backoff_s: float = MAX_BACKOFF_S   # the longest wait between two tries of one event

    def __post_init__(self) -> None:
        for url in self.webhooks:
            check_url(url)
        if self.tiles is not None and not self.tiles.startswith(("http://", "https://")):
            raise ConsoleError(f"--tiles {self.tiles!r} must be an http(s) URL template with {{z}}/{{x}}/{{y}}")
        if not self.public and not _loopback(self.host):
            raise ConsoleError(f"{self.host} is not a loopback address: the console serves the lender's evidence; "
                               "put it behind TLS (--tls-cert/--tls-key, or a proxy) and pass --public")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConsoleError("--tls-cert and --tls-key go together")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_bind(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConsoleError(f"--http/--bind {text!r} must be HOST:PORT, e.g. {DEFAULT_BIND}")
    return host, int(port)


def metrics_token(data_dir: Path) -> str:
    """The bearer token Prometheus presents at /metrics (``DATA/metrics.token``, 0600, made on first start)."""
    path = Path(data_dir) / METRICS_TOKEN_FILE
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            create_private(path, secrets.token_urlsafe(32).encode("ascii") + b"\n")
    return path.read_text("ascii").strip()


def webhook_key(data_dir: Path) -> bytes:
    """The HMAC key of webhook signatures (``DATA/webhook.key``, 32 bytes, 0600, made on first start)."""
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        with contextlib.suppress(KeyFileExistsError):
            return create_key(path)
    return read_key(path)


@dataclass
class Console:
    """One running console over one lender data directory."""

    config: ConsoleConfig
    portfolio: Portfolio = field(default_factory=Portfolio)
    broadcaster: Broadcaster = field(default_factory=Broadcaster)
    watcher: Watcher | None = None
    dispatcher: Dispatcher | None = None
    server: uvicorn.Server | None = None
    app: object = None

    def build(self) -> ConsoleState:
        data = Path(self.config.data_dir)
        url = self.config.store_url
        open_store(data, url, create=False).close()   # a wrong --data or --store fails here, with the store's own word
        ConsoleRecords.open(data).close()
        self.watcher = Watcher(data, self.portfolio, poll_s=self.config.poll_s,
                               missed_heartbeats=self.config.missed_heartbeats, on_change=self._changed,
                               store_url=url)
        self.dispatcher = Dispatcher(data, self.config.webhooks, webhook_key(data),
                                     max_backoff_s=self.config.webhook_backoff_s)
        watcher = self.watcher
        return ConsoleState(data_dir=data, portfolio=self.portfolio, broadcaster=self.broadcaster,
                            metrics_token=metrics_token(data), tiles=self.config.tiles,
                            judged=lambda: watcher.judged, poke=watcher.poke, watch_failure=lambda: watcher.failure,
                            store_url=url)

    def _changed(self, devices: set[str]) -> None:
        self.broadcaster.publish(devices)
        if self.dispatcher is not None:
            self.dispatcher.wake.set()

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when the config said 0)."""
        assert self.server is not None and self.server.started
        sockets = [s for server in self.server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"

    async def start(self) -> None:
        """Build, start the threads, and listen; returns once it listens."""
        state = self.build()
        self.app = app = create_app(state)
        self.broadcaster.loop = asyncio.get_running_loop()
        extra = {}
        if self.config.tls_cert is not None:
            extra = {"ssl_certfile": str(self.config.tls_cert), "ssl_keyfile": str(self.config.tls_key)}
        if self.config.forwarded_allow_ips:
            extra |= {"proxy_headers": True, "forwarded_allow_ips": self.config.forwarded_allow_ips}
        else:
            extra |= {"proxy_headers": False}
        config = uvicorn.Config(app, host=self.config.host, port=self.config.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_graceful_shutdown=2, **extra)
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # the caller owns SIGINT / SIGTERM
        assert self.watcher is not None and self.dispatcher is not None
        self.watcher.start()
        self.dispatcher.start()
        self._serving = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._serving.done():
                self.stop_threads()
                self._serving.result()   # raises why it could not listen
                raise ConsoleError(f"the console could not listen on {self.config.host}:{self.config.port}")
            await asyncio.sleep(0.05)

    def stop_threads(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()

    async def stop(self) -> None:
        self.broadcaster.close()
        if self.server is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serving, 10)
        await asyncio.get_running_loop().run_in_executor(None, self.stop_threads)

