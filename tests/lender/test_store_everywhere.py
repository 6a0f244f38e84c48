"""`--store postgresql://…` everywhere: every `lender` sub-command on a PostgreSQL store, and the console serving it.

One PostgreSQL lender (a database on the session's throwaway server) with two
devices, a gap record and a kept checkpoint; each sub-command runs against it
in this process (pledgewatch.cli.main), must succeed and must show what is in
that database. No SQLite store appears in DATA at any point: DATA keeps only
the keys, the enrollment floor and the console's records (docs/decisions.md).
The console (`lender web --store`, its own process) shows the asset stored in
PostgreSQL to a logged-in user and follows an envelope stored after it started.
"""
from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from lender.cli import checkpoint_json
from lender.evidence.export import export_rows
from lender.evidence.ingest import Ingest
from lender.evidence.store import STORE_FILE
from lender.evidence.stores import open_store
from pledgewatch.cli import main
from telemetry.envelope import Gap, GapReason
from tests.kit.lender import PYTHON_BIN, Device, batch, enroll, free_environment

PASSWORD = "correct horse battery staple"
TECHNICIAN_KEY = "11" * 32


@pytest.fixture(scope="module")
def pg_lender(postgres, tmp_path_factory):
    """A lender whose store is a fresh PostgreSQL database: gw-a (asset press-7, 6 envelopes, a gap record at seq 6)
    and gw-b (asset spare-1, 2 envelopes); an export of gw-a and its checkpoint kept as files."""
    url = postgres.database()
    data = tmp_path_factory.mktemp("pg-lender") / "lender"
    a, b = Device("gw-a"), Device("gw-b")
    with open_store(data, url) as store:
        enroll(store, data, a, asset="press-7")
        enroll(store, data, b, asset="spare-1")
        ingest = Ingest(store)
        ingest.batch(batch(a.chain(4)), peer="site")
        ingest.batch(batch([a.next(gap=Gap(GapReason.OVERFLOW.value, first=5, last=5, count=1)), a.next()]),
                     peer="site")
        ingest.batch(batch(b.chain(2)), peer="site")
        old = data.parent / "old-checkpoint.json"
        old.write_text(json.dumps(checkpoint_json(store.checkpoint(), store.log.identity.public_key)))
        exported = data.parent / "gw-a.jsonl"
        exported.write_text("".join(json.dumps(row) + "\n" for row in export_rows(store, "gw-a")))
    (data.parent / "rules.toml").write_text("[sampling]\nperiod_s = 60\n")
    return {"url": url, "data": data, "dir": data.parent}


def run(capsys, monkeypatch, argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["lender", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def checkpoint_size(out: str) -> bool:
    return json.loads(out)["tree_size"] > 8


# (sub-command and its arguments after --data/--store, the exit code, what its output must show)
CASES = [
    (["migrate"], 0, "nothing to apply"),
    (["devices", "--json"], 0, '"device": "gw-b"'),
    (["readings", "--device", "gw-a", "--json"], 0, '"seq": 4'),
    (["gaps", "--device", "gw-a", "--json"], 0, '"reason": "overflow"'),
    (["quarantine", "--counts"], 0, "nothing refused"),
    (["export", "--device", "gw-a"], 0, '"seq": 6'),
    (["export", "--device", "gw-a", "--format", "bundle"], 0, '"entries"'),
    (["key"], 0, re.compile(r"\A[0-9a-f]{64}\n\Z")),
    (["checkpoint", "--json"], 0, checkpoint_size),
    (["receipt", "--device", "gw-a", "--seq", "3"], 0, '"receipt_b64"'),
    (["prove-consistency", "{dir}/old-checkpoint.json"], 0, "prove-consistency: OK"),
    (["alarms"], 0, ""),
    (["status", "--device", "gw-a", "--json"], 0, '"last_seq": 6'),
    (["review", "--device", "gw-a", "--seq", "5", "--by", "ana", "--note", "buffer overflow"], 0, "reviewed gw-a seq 5"),
    (["gaps", "--device", "gw-a"], 0, "reviewed by ana"),
    (["permit", "spare-1", "--from", "2030-01-01T08:00", "--until", "2030-01-01T09:00", "--reason", "release"],
     0, "permit for spare-1 on gw-b"),
    (["configure", "gw-a", "{dir}/rules.toml"], 0, "configure gw-a: seq"),
    (["inspect", "gw-a", "--wait", "0"], 3, ""),
    (["commands", "--json"], 0, '"kind": "inspect"'),
    (["register", "--device", "gw-c", "--public-key", "22" * 32, "--asset", "press-9"], 0, "registered gw-c"),
    (["revoke", "--device", "gw-c"], 0, "revoked gw-c"),
    (["devices"], 0, re.compile(r"gw-c .* revoked .* press-9")),
    (["technicians", "add", "--id", "tom", "--public-key", TECHNICIAN_KEY], 0, "registered technician tom"),
    (["technicians", "list"], 0, "tom"),
    (["technicians", "revoke", "--id", "tom"], 0, "revoked technician tom"),
    (["users", "add", "--name", "ada", "--role", "admin"], 0, "added admin ada"),
    (["users", "list", "--json"], 0, '"name": "ada"'),
    (["users", "login-link", "--name", "ada"], 0, "/login/once/"),
    (["users", "remove", "--name", "ada"], 0, "removed ada"),
]


@pytest.mark.parametrize("argv, code, shows", CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_each_lender_subcommand_works_on_a_postgresql_store(pg_lender, capsys, monkeypatch, argv, code, shows):
    filled = [str(a).format(dir=pg_lender["dir"]) for a in argv]
    words = filled[:2] if filled[0] in ("technicians", "users") else filled[:1]
    given, out, err = run(capsys, monkeypatch, [*words, "--data", pg_lender["data"], "--store", pg_lender["url"],
                                                *filled[len(words):]], PASSWORD + "\n")
    assert given == code, (out, err)
    if callable(getattr(shows, "search", None)):
        assert shows.search(out), out
    elif callable(shows):
        assert shows(out), out
    else:
        assert shows in out, (out, err)
    assert not (pg_lender["data"] / STORE_FILE).exists()  # the state it showed came from PostgreSQL


def test_verify_takes_the_keys_from_a_postgresql_store_instead_of_a_data_directory(pg_lender, capsys, monkeypatch):
    code, out, err = run(capsys, monkeypatch, ["verify", pg_lender["dir"] / "gw-a.jsonl", "--store", pg_lender["url"]])
    assert code == 0 and "verify: OK: 6 row(s)" in out, (out, err)
    with pytest.raises(SystemExit):  # an alternative: one source of keys
        main(["lender", "verify", str(pg_lender["dir"] / "gw-a.jsonl"), "--store", pg_lender["url"],
              "--data", str(pg_lender["data"])])
    capsys.readouterr()


def wait_until(predicate, shown, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, shown()
        time.sleep(0.1)


def log_in(base_url: str, name: str) -> httpx.Client:
    client = httpx.Client(base_url=base_url)
    token = re.search(r'name="login_token" value="([^"]+)"', client.get("/login").text).group(1)
    answer = client.post("/login", data={"name": name, "password": PASSWORD, "login_token": token, "next": "/"})
    assert answer.status_code == 303, answer.text
    return client


def test_the_console_serves_the_portfolio_of_a_postgresql_store(postgres, tmp_path, capsys, monkeypatch):
    url, data = postgres.database(), tmp_path / "lender"
    press = Device("gw-press")
    with open_store(data, url) as store:
        enroll(store, data, press, asset="press-7")
        Ingest(store).batch(batch(press.chain(3)), peer="site")
    assert run(capsys, monkeypatch, ["users", "add", "--data", data, "--store", url, "--name", "vera",
                                     "--role", "viewer"], PASSWORD + "\n")[0] == 0

    web = subprocess.Popen([str(PYTHON_BIN / "pledgewatch"), "lender", "web", "--data", str(data), "--store", url,
                            "--bind", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=free_environment())
    try:
        line = web.stdout.readline()
        found = re.search(r"console: (http://127\.0\.0\.1:\d+)/", line)
        assert found, (line, web.stderr.read() if web.poll() is not None else "")
        client = log_in(found.group(1), "vera")

        def assets() -> dict:
            return {(a["device"], a["asset"]): a for a in client.get("/api/portfolio").json()["assets"]}

        wait_until(lambda: ("gw-press", "press-7") in assets(), assets)  # the watch's first pass, from PostgreSQL
        assert assets()[("gw-press", "press-7")]["last_seq"] == 3
        assert "press-7" in client.get("/").text
        detail = client.get("/api/assets/gw-press/press-7")
        assert detail.status_code == 200 and detail.json()["device_record"]["asset"] == "press-7", detail.text

        with open_store(data, url) as store:  # a worker stores more: the console's watch sees it in PostgreSQL
            Ingest(store).batch(batch(press.chain(2)), peer="site")
        wait_until(lambda: assets()[("gw-press", "press-7")]["last_seq"] == 5, assets)
    finally:
        web.send_signal(signal.SIGTERM)
        out, err = web.communicate(timeout=30)
    assert web.returncode == 0 and "console: stopped" in out, err
    assert not (data / STORE_FILE).exists()
