"""A throwaway PostgreSQL server for tests and benchmarks: Debian's `postgresql` binaries, a temporary directory, a free port.

`PostgresServer` runs ``initdb`` and ``postgres`` from ``/usr/lib/postgresql/<N>/bin``
(or ``$PG_BIN``) in a directory of its own, listening on 127.0.0.1 only, with
trust authentication for the one superuser it makes. ``initdb`` refuses to
run as root, so when the tests run as root (CI does) the server runs as an
unprivileged system user (``postgres``, the Debian package's, else
``nobody``) through ``setpriv``; its directory is chowned to that user and
removed with everything in it by `stop`.

`restart(immediate=True)` stops the server the way a crash does (no
checkpoint, the WAL replays at start) and starts it again on the same port:
what the lender's fault tests need. `database()` creates a fresh database and
returns its URL, so each test gets a store of its own on one server.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DEBIAN_PACKAGE = "postgresql"


def postgres_bin() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: $PG_BIN, else Debian's newest, else None."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (ourselves) unless we are root, who may not run initdb."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as")


class PostgresServer:
    """One throwaway server: `start()`, `database()`, `restart()`, `stop()` (or use it as a context manager)."""

    def __init__(self, *, fsync: bool = False, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise FileNotFoundError(f"PostgreSQL is not installed (apt-get install {DEBIAN_PACKAGE})")
        self.bin = binaries
        self.fsync = fsync
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.user = _server_user()
        self.superuser = self.user.pw_name if self.user is not None else pwd.getpwuid(os.geteuid()).pw_name
        self.root = Path(tempfile.mkdtemp(prefix="pledgewatch-pg-"))
        self.data = self.root / "data"
        self.log_file = self.root / "server.log"
        self.process: subprocess.Popen | None = None
        self._databases = 0

    # --- running the binaries as the server's user ---

    def _command(self, *argv: str) -> list[str]:
        if self.user is None:
            return list(argv)
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups", *argv]

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def start(self) -> PostgresServer:
        """Create the cluster (the first time) and start the server; after `kill`, start it again on its port."""
        self._own(self.root)
        os.chmod(self.root, 0o700)
        if not self.data.exists():
            subprocess.run(self._command(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                                         self.superuser, "-E", "UTF8", "--locale=C", "--no-sync"),
                           check=True, capture_output=True, cwd=self.root)
        self._launch()
        return self

    def _launch(self) -> None:
        options = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(self.root),
                   "fsync": "on" if self.fsync else "off", "full_page_writes": "on" if self.fsync else "off",
                   "max_connections": "200", "shared_buffers": "128MB", **self.settings}
        argv = [str(self.bin / "postgres"), "-D", str(self.data)]
        for name, value in options.items():
            argv += ["-c", f"{name}={value}"]
        log = open(self.log_file, "ab")
        self._own(self.log_file)
        self.process = subprocess.Popen(self._command(*argv), stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited at start:\n{self.log_file.read_text(errors='replace')[-3000:]}")
            try:
                self._admin("SELECT 1")
                return
            except Exception:
                time.sleep(0.05)
        raise TimeoutError(f"PostgreSQL did not accept connections within 30 s (log: {self.log_file})")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=2) as conn:
            conn.execute(sql)

    def database(self, name: str | None = None, *, unix_socket: bool = False) -> str:
        """A new, empty database on this server; its URL (TCP on 127.0.0.1, or the server's Unix socket)."""
        self._databases += 1
        name = name or f"pledgewatch_{os.getpid()}_{self._databases}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        if unix_socket:  # what a lender on the database's own host uses
            return f"postgresql://{self.superuser}@/{name}?host={self.root}&port={self.port}"
        return self.url(name)

    def kill(self) -> None:
        """Stop the server at once, as a crash would (SIGQUIT: no shutdown checkpoint; the WAL replays at start)."""
        if self.process is not None and self.process.poll() is None:
            subprocess.run(self._command(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate",
                                         "-w"), capture_output=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self._launch()

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        try:
            if self.process is not None and self.process.poll() is None:
                subprocess.run(self._command(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                                             "-w"), capture_output=True)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
        finally:
            self.process = None
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
