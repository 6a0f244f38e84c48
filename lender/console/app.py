"""The console's web application (Starlette): pages, the JSON API, live updates, metrics, and who may do what.

Routes (docs/lender-console.md has the JSON API in full):

| route | who | what |
| --- | --- | --- |
| ``GET /login``, ``POST /login``, ``GET /login/once/<token>`` | anyone | log in (rate-limited) |
| ``POST /logout`` | any user | end the session |
| ``GET /`` | viewer | the portfolio (filters: ``state``, ``site``, ``borrower``, ``q``, ``offset``) |
| ``GET /portfolio/rows`` | viewer | the portfolio's table alone (what live updates fetch) |
| ``GET /assets/<device>/<asset>`` (+ ``/live``) | viewer | one asset |
| ``GET /devices/<device>/evidence.bundle.json`` | viewer | the device's evidence bundle (lender.evidence.export) |
| ``GET /devices/<device>/evidence.jsonl`` | viewer | the device's evidence export, one row per envelope |
| ``POST /alarms/ack``, ``POST /gaps/review`` | operator | acknowledge an alarm / review a gap record, with a note |
| ``POST /commands/inspect``, ``POST /commands/permit`` | operator | a signed command to the device, as ``lender inspect`` / ``lender permit`` |
| ``GET /admin`` | admin | accounts and the audit log |
| ``GET /events`` | viewer | server-sent events: ``portfolio`` and ``device-<id>`` when they change |
| ``GET /metrics`` | viewer, or ``Authorization: Bearer`` the token in ``DATA/metrics.token`` | Prometheus |
| ``/api/...`` | as the pages | the same views as JSON |

Every route but the login ones and ``/static/`` (the pinned CSS and scripts)
needs a session; a page answers 303 to ``/login``, everything else 401. Every
state change (POST) needs the session's CSRF token, as a form field ``csrf``
or the header ``X-CSRF-Token``, and an ``Origin`` (when the browser sends
one) equal to the console's own. Session cookies are ``HttpOnly``,
``SameSite=Strict`` and ``Secure`` whenever the request came over HTTPS.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lender.console import drawing, views
from lender.console.accounts import LIFETIME_S, Accounts, Session, same_token
from lender.console.metrics import CONTENT_TYPE, exposition, registry_for
from lender.console.portfolio import STATES, Portfolio, read_site
from lender.console.records import Ack, ConsoleRecords
from lender.console.webhooks import Outbox
from lender.evidence.alarms import alarm_events, open_alarms
from lender.evidence.commands import CommandDesk, IssuedCommand
from lender.evidence.export import export_bundle, export_rows
from lender.evidence.log import lender_identity
from lender.evidence.registry import iso_time, parse_time
from lender.evidence.store import EvidenceStore, Review
from lender.evidence.stores import open_store
from lender.exc import ExportFormatError
from telemetry.command import Permit
from telemetry.exc import CommandError

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "pw_session"
LOGIN_COOKIE = "pw_login"
NOTE_LIMIT = 2000
SSE_KEEPALIVE_S = 15.0
SSE_MIN_INTERVAL_S = 0.5   # live updates are coalesced: at most two a second per browser


class Refusal(Exception):
    """A request refused: renders itself as JSON or a short page with its status (see `_refusal`)."""

    def __init__(self, status: int, text: str, headers: dict | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers or {}


@dataclass
class Broadcaster:
    """Hands the watcher's change notices (from its thread) to every live browser (in the event loop)."""

    loop: asyncio.AbstractEventLoop | None = None
    queues: set[asyncio.Queue] = field(default_factory=set)

    def publish(self, devices: set[str]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self._fan_out, frozenset(devices))

    def _fan_out(self, devices: frozenset[str] | None) -> None:
        for queue in list(self.queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(devices)

    def close(self) -> None:
        """End every live stream (the server is stopping; browsers reconnect to the next one)."""
        self._fan_out(None)


@dataclass
class ConsoleState:
    """Everything a request handler needs, built once (lender.console.server.Console)."""

    data_dir: Path
    portfolio: Portfolio
    broadcaster: Broadcaster
    metrics_token: str
    tiles: str | None = None
    judged: Callable[[], int] = lambda: 0
    poke: Callable[[], None] = lambda: None
    watch_failure: Callable[[], BaseException | None] = lambda: None
    clock: Callable[[], float] = time.time
    store_url: str | None = None    # the evidence in PostgreSQL (`--store`); None: SQLite in data_dir
    _local: threading.local = field(default_factory=threading.local)

    def store(self) -> EvidenceStore:
        """This thread's connection to the evidence store."""
        if getattr(self._local, "store", None) is None:
            self._local.store = open_store(self.data_dir, self.store_url, create=False)
        return self._local.store

    def records(self) -> ConsoleRecords:
        """This thread's connection to the console's own records."""
        if getattr(self._local, "records", None) is None:
            self._local.records = ConsoleRecords.open(self.data_dir)
        return self._local.records

    def accounts(self) -> Accounts:
        return Accounts(self.records())

    def desk(self) -> CommandDesk:
        """The command desk `lender inspect` and `lender permit` use: signed with the lender's key in DATA/enroll."""
        return CommandDesk(self.store(), lender_identity(self.data_dir), clock=self.clock)


# --- who is asking -------------------------------------------------------------------------------

def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        if origin == "null":
            raise Refusal(403, "cross-origin request refused")
        return
    expected = f"{request.url.scheme}://{request.url.netloc}"
    if origin != expected:
        raise Refusal(403, f"cross-origin request refused (Origin {origin}, expected {expected})")


async def _csrf_token_of(request: Request) -> str | None:
    header = request.headers.get("x-csrf-token")
    if header is not None:
        return header
    if request.headers.get("content-type", "").startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf")
        return value if isinstance(value, str) else None
    return None


def requires(role: str, *, metrics: bool = False):
    """The route needs a session of `role` or above; a POST also needs its CSRF token and a same-origin request."""

    def decorate(handler):
        @wraps(handler)
        async def guarded(request: Request) -> Response:
            state: ConsoleState = request.app.state.console
            now = state.clock()
            try:
                if metrics and _bearer_ok(request, state.metrics_token):
                    return await handler(request, None)
                token = request.cookies.get(SESSION_COOKIE)
                session = await run_in_threadpool(lambda: state.accounts().session(token, now=now))
                if session is None:
                    if request.method == "GET" and _wants_html(request):
                        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
                    raise Refusal(401, "log in first")
                if request.method not in ("GET", "HEAD"):
                    _check_origin(request)
                    if not same_token(await _csrf_token_of(request), session.csrf):
                        raise Refusal(403, "missing or wrong CSRF token: reload the page and try again")
                if not session.user.may(role):
                    raise Refusal(403, f"this needs the {role} role; {session.user.name} is a {session.user.role}")
                return await handler(request, session)
            except Refusal as refusal:
                return _refusal(request, refusal)
        return guarded
    return decorate


def _bearer_ok(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    return bool(token) and given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())


def _refusal(request: Request, refusal: Refusal) -> Response:
    if _wants_html(request):
        page = request.app.state.templates.get_template("error.html").render(status=refusal.status, text=refusal.text,
                                                                             session=None)
        return HTMLResponse(page, refusal.status, headers=refusal.headers)
    return JSONResponse({"error": refusal.text}, refusal.status, headers=refusal.headers)


# --- rendering -----------------------------------------------------------------------------------

def _environment(tiles: str | None) -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals.update(age=views.age, utc=views.utc, iso=iso_time, value=views.shown_value, STATES=STATES,
                       KEY_NAMES=views.KEY_NAMES,
                       line_chart=drawing.line_chart, bar_chart=drawing.bar_chart, fence_map=drawing.fence_map,
                       tiles=tiles)
    return env


def _render(request: Request, name: str, session: Session | None, **context) -> HTMLResponse:
    state: ConsoleState = request.app.state.console
    html = request.app.state.templates.get_template(name).render(
        request=request, session=session, now=state.clock(), **context)
    return HTMLResponse(html)


def _filters(request: Request) -> dict:
    q = request.query_params
    state = q.get("state") or None
    if state is not None and state not in STATES:
        raise Refusal(400, f"state must be one of {', '.join(STATES)}")
    try:
        offset = max(0, int(q.get("offset", "0")))
        limit = min(1000, max(1, int(q.get("limit", str(views.PAGE_SIZE)))))
    except ValueError:
        raise Refusal(400, "offset and limit must be integers") from None
    return {"state": state, "site": q.get("site") or None, "borrower": q.get("borrower") or None,
            "text": (q.get("q") or "").strip()[:100] or None, "offset": offset, "limit": limit}


def _query(filters: dict, **changes) -> str:
    merged = {**filters, **changes}
    pairs = {"state": merged["state"], "site": merged["site"], "borrower": merged["borrower"], "q": merged["text"],
             "offset": merged["offset"] or None}
    return urlencode({k: v for k, v in pairs.items() if v})


# --- pages ---------------------------------------------------------------------------------------

async def login_page(request: Request) -> Response:
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = _render(request, "login.html", None, login_token=token, next=_safe_next(request.query_params.get("next")),
                       error=None)
    response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/login")
    return response


def _safe_next(target: str | None) -> str:
    """Only a path on this console: never `//host` or a full URL (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _start_session(request: Request, state: ConsoleState, user, target: str) -> Response:
    token = state.accounts().open_session(user, now=state.clock())
    response = RedirectResponse(_safe_next(target), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


async def login(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    try:
        _check_origin(request)
    except Refusal as refusal:
        return _refusal(request, refusal)
    form = await request.form()
    name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))[:1024]
    target = _safe_next(str(form.get("next", "/")))
    cookie = request.cookies.get(LOGIN_COOKIE)
    if not cookie or not same_token(str(form.get("login_token", "")), cookie):
        return _refusal(request, Refusal(403, "the login form expired: reload it and try again"))
    keys = (f"user:{name}", f"ip:{_client(request)}")
    now = state.clock()

    def attempt():
        accounts = state.accounts()
        wait = accounts.throttled(keys, now=now)
        if wait > 0:
            return None, wait
        return accounts.check_password(name, password, keys=keys, now=now), 0.0

    user, wait = await run_in_threadpool(attempt)
    if wait > 0:
        return _refusal(request, Refusal(429, f"too many failed logins: try again in {wait:.0f} s",
                                         {"Retry-After": str(int(wait) + 1)}))
    if user is None:
        page = _render(request, "login.html", None, login_token=cookie, next=target,
                       error="wrong name or password")
        page.status_code = 401
        return page
    return await run_in_threadpool(_start_session, request, state, user, target)


async def login_once(request: Request) -> Response:
    state: ConsoleState = request.app.state.console
    user = await run_in_threadpool(lambda: state.accounts().redeem_link(request.path_params["token"],
                                                                         now=state.clock()))
    if user is None:
        return _refusal(request, Refusal(401, "this login link was used already or has expired"))
    return await run_in_threadpool(_start_session, request, state, user, "/")


@requires("viewer")
async def logout(request: Request, session: Session) -> Response:
    state: ConsoleState = request.app.state.console
    await run_in_threadpool(state.accounts().close_session, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _portfolio_context(request: Request) -> dict:
    state: ConsoleState = request.app.state.console
    filters = _filters(request)
    page = views.portfolio_page(state.portfolio, state=filters["state"], site=filters["site"],
                                borrower=filters["borrower"], text=filters["text"], offset=filters["offset"],
                                limit=filters["limit"])
    acked = state.records().acked()
    return {"page": page, "filters": filters, "acked": acked, "query": lambda **c: _query(filters, **c),
            "watch_failure": state.watch_failure()}


@requires("viewer")
async def portfolio(request: Request, session: Session) -> Response:
    context = await run_in_threadpool(_portfolio_context, request)
    return _render(request, "portfolio.html", session, **context)


@requires("viewer")
async def portfolio_rows(request: Request, session: Session) -> Response:
    context = await run_in_threadpool(_portfolio_context, request)
    return _render(request, "_portfolio_rows.html", session, **context)


def _detail(request: Request) -> views.AssetDetail:
    state: ConsoleState = request.app.state.console
    device, asset = request.path_params["device"], request.path_params["asset"]
    row = views.find_row(state.portfolio, device, asset)
    if row is None:
        raise Refusal(404, f"no asset {asset!r} of device {device!r} in the portfolio")
    store = state.store()
    registered = store.device(device)
    facts = read_site(state.data_dir / "enroll" / "sites", registered.asset if registered else None)
    return views.asset_detail(store, state.records(), state.desk(), row, facts)


@requires("viewer")
async def asset_page(request: Request, session: Session) -> Response:
    detail = await run_in_threadpool(_detail, request)
    return _render(request, "asset.html", session, d=detail)


@requires("viewer")
async def asset_live(request: Request, session: Session) -> Response:
    detail = await run_in_threadpool(_detail, request)
    return _render(request, "_asset_live.html", session, d=detail)


@requires("viewer")
async def evidence(request: Request, session: Session) -> Response:
    state: ConsoleState = request.app.state.console
    device = request.path_params["device"]

    def rows() -> list[bytes]:
        store = state.store()
        if store.device(device) is None and store.last_received(device) is None:
            raise Refusal(404, f"no device {device!r}")
        return [(json.dumps(row) + "\n").encode() for row in export_rows(store, device)]

    lines = await run_in_threadpool(rows)
    state.records().audit(session.user.name, "export", device, f"{len(lines)} envelope(s)", at=state.clock())
    return Response(b"".join(lines), media_type="application/x-ndjson", headers={
        "Content-Disposition": f'attachment; filename="{device}.jsonl"'})


@requires("viewer")
async def evidence_bundle(request: Request, session: Session) -> Response:
    """The device's self-contained evidence bundle (lender.evidence.export.export_bundle): its whole record in the
    lender's log with the proofs, checked by `pledgewatch lender verify FILE --lender-key KEY` alone."""
    state: ConsoleState = request.app.state.console
    device = request.path_params["device"]

    def build() -> tuple[dict, list[str]]:
        try:
            return export_bundle(state.store(), device)
        except ExportFormatError as exc:
            raise Refusal(404, str(exc)) from exc

    document, warnings = await run_in_threadpool(build)
    state.records().audit(session.user.name, "export-bundle", device,
                          f"{len(document['entries'])} log entries" + "".join(f"; WARNING {w}" for w in warnings),
                          at=state.clock())
    return Response((json.dumps(document, indent=1) + "\n").encode("utf-8"), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{device}.bundle.json"'})


# --- actions -------------------------------------------------------------------------------------

async def _fields(request: Request) -> dict:
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = await request.json()
        except ValueError:
            raise Refusal(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise Refusal(400, "the body must be a JSON object")
        return data
    return dict(await request.form())


def _note(fields: dict) -> str:
    note = str(fields.get("note", "")).strip()
    if not note or len(note) > NOTE_LIMIT:
        raise Refusal(400, f"a note of 1..{NOTE_LIMIT} characters is required (it is the audit record)")
    return note


def _seq(fields: dict) -> int:
    try:
        return int(fields.get("seq", ""))
    except (TypeError, ValueError):
        raise Refusal(400, "seq must be an integer") from None


def _back(request: Request, fields: dict, payload: dict) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse(payload, 201)
    return RedirectResponse(_safe_next(str(fields.get("back", "/"))), status_code=303)


@requires("operator")
async def acknowledge(request: Request, session: Session) -> Response:
    state: ConsoleState = request.app.state.console
    fields = await _fields(request)
    device, alarm, seq, note = str(fields.get("device", "")), str(fields.get("alarm", "")), _seq(fields), _note(fields)

    def act() -> Ack:
        store = state.store()
        raised = open_alarms(alarm_events(store, device)).get((device, alarm))
        if raised is None or raised.seq != seq:
            raise Refusal(409, f"{alarm} of {device} is not open at seq {seq} (it may have cleared): reload")
        ack = Ack(device, alarm, seq, session.user.name, note, state.clock())
        store.add_ack(ack)            # the evidence log's ack entry, first: it is what a bundle carries
        state.records().add_ack(ack)  # the console's own record and audit line (what the pages show)
        return ack

    ack = await run_in_threadpool(act)
    state.broadcaster.publish({device})
    return _back(request, fields, {"device": ack.device, "alarm": ack.alarm, "seq": ack.seq, "by": ack.by,
                                   "note": ack.note, "at": iso_time(ack.at)})


@requires("operator")
async def review_gap(request: Request, session: Session) -> Response:
    state: ConsoleState = request.app.state.console
    fields = await _fields(request)
    device, seq, note = str(fields.get("device", "")), _seq(fields), _note(fields)

    def act() -> Review:
        store = state.store()
        if seq not in {g.seq for g in store.gap_records(device)}:
            raise Refusal(404, f"{device} has no signed gap record at seq {seq}")
        review = Review(device, seq, session.user.name, note, state.clock())
        store.add_review(review)  # the evidence store's audit record: the risk judgement reads it
        state.records().audit(session.user.name, "review", f"{device} gap seq {seq}", note, at=review.at)
        return review

    review = await run_in_threadpool(act)
    state.poke()
    return _back(request, fields, {"device": review.device, "seq": review.seq, "by": review.reviewer,
                                   "note": review.note, "at": iso_time(review.at)})


def _commandable(store: EvidenceStore, device: str) -> None:
    registered = store.device(device)
    if registered is None:
        raise Refusal(404, f"no device {device!r} is registered")
    if not registered.active:
        raise Refusal(409, f"{device} is revoked: it is sent no commands")


def _issued(request: Request, fields: dict, command: IssuedCommand, **more) -> Response:
    return _back(request, fields, {**command.as_json("issued"), **more})


@requires("operator")
async def inspect(request: Request, session: Session) -> Response:
    """`lender inspect DEVICE` from the page: a signed inspect command, pending until the device fetches it."""
    state: ConsoleState = request.app.state.console
    fields = await _fields(request)
    device = str(fields.get("device", ""))

    def act() -> IssuedCommand:
        _commandable(state.store(), device)
        issued = state.desk().inspect(device, session.user.name)
        state.records().audit(session.user.name, "inspect", f"{device} command seq {issued.seq}",
                              f"nonce {issued.nonce.hex()}", at=issued.issued_at)
        return issued

    issued = await run_in_threadpool(act)
    state.broadcaster.publish({device})
    return _issued(request, fields, issued)


@requires("operator")
async def permit(request: Request, session: Session) -> Response:
    """`lender permit ASSET` from the page: openings of the asset in the window are events, not alarms."""
    state: ConsoleState = request.app.state.console
    fields = await _fields(request)
    device, asset = str(fields.get("device", "")), str(fields.get("asset", ""))
    try:
        now = state.clock()
        start = int(parse_time(str(fields.get("from") or "0s"), now=now))  # none given: from now (an age of 0 s)
        until = int(parse_time(str(fields.get("until", "")), now=now))
        window = Permit(asset, start, until, str(fields.get("reason", "")).strip())
    except (ValueError, CommandError) as exc:
        raise Refusal(400, f"a permit needs an asset, from and until (ISO 8601, UTC unless a zone is named) and a "
                           f"reason of 1..200 characters: {exc}") from None
    if until <= state.clock():
        raise Refusal(400, f"the window ends {iso_time(until)}, in the past: a permit is of no use then")

    def act() -> IssuedCommand:
        store = state.store()
        _commandable(store, device)
        if asset not in {r.asset for r in state.portfolio.device_rows(device)}:
            raise Refusal(404, f"{device} watches no asset {asset!r}")
        issued = state.desk().issue(device, window, session.user.name)
        state.records().audit(session.user.name, "permit", f"{device} {asset} command seq {issued.seq}",
                              f"{iso_time(start)} .. {iso_time(until)}: {window.reason}", at=issued.issued_at)
        return issued

    issued = await run_in_threadpool(act)
    state.broadcaster.publish({device})
    return _issued(request, fields, issued, asset=asset, **{"from": iso_time(start), "until": iso_time(until)})


@requires("admin")
async def admin(request: Request, session: Session) -> Response:
    state: ConsoleState = request.app.state.console

    def load() -> dict:
        records = state.records()
        outbox = Outbox(records)
        return {"users": state.accounts().users(), "audit": records.audit_entries(200),
                "endpoints": [(c, outbox.backlog(c[0])) for c in outbox.cursors()]}

    return _render(request, "admin.html", session, **await run_in_threadpool(load))


# --- live updates and metrics --------------------------------------------------------------------

@requires("viewer")
async def events(request: Request, session: Session) -> Response:
    state: ConsoleState = request.app.state.console
    broadcaster = state.broadcaster
    broadcaster.loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=64)
    broadcaster.queues.add(queue)
    deadline = session.created_at + LIFETIME_S
    token = request.cookies.get(SESSION_COOKIE)

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 3000\n\n"
            while time.time() < deadline:
                try:
                    notice = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    # a stream lives no longer than its session: logout or a removed account ends it too
                    alive = await run_in_threadpool(lambda: state.accounts().session(token, now=state.clock()))
                    if alive is None:
                        return
                    yield ": keep-alive\n\n"
                    continue
                if notice is None:
                    return
                devices = set(notice)
                await asyncio.sleep(SSE_MIN_INTERVAL_S)
                while not queue.empty():
                    notice = queue.get_nowait()
                    if notice is None:
                        return
                    devices |= notice
                stamp = iso_time(time.time())
                yield f"event: portfolio\ndata: {json.dumps({'devices': len(devices), 'at': stamp})}\n\n"
                for device in sorted(devices)[:200]:
                    yield f"event: device-{device}\ndata: {json.dumps({'at': stamp})}\n\n"
        finally:
            broadcaster.queues.discard(queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@requires("viewer", metrics=True)
async def metrics(request: Request, session: Session | None) -> Response:
    body = await run_in_threadpool(exposition, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE)


# --- the JSON API --------------------------------------------------------------------------------

@requires("viewer")
async def api_me(request: Request, session: Session) -> Response:
    return JSONResponse({"name": session.user.name, "role": session.user.role, "csrf": session.csrf})


@requires("viewer")
async def api_portfolio(request: Request, session: Session) -> Response:
    state: ConsoleState = request.app.state.console

    def load() -> dict:
        context = _portfolio_context(request)
        page, now = context["page"], state.clock()
        return {"total": page.total, "offset": page.offset, "counts": page.counts,
                "loading": None if page.loading is None else {"judged": page.loading[0], "of": page.loading[1]},
                "assets": [views.row_json(r, now, context["acked"]) for r in page.rows]}

    return JSONResponse(await run_in_threadpool(load))


@requires("viewer")
async def api_asset(request: Request, session: Session) -> Response:
    state: ConsoleState = request.app.state.console
    detail = await run_in_threadpool(_detail, request)
    return JSONResponse(views.asset_json(detail, state.clock()))


# --- the application -----------------------------------------------------------------------------

def security_headers(tiles: str | None):
    """Content-Security-Policy (no inline script, nothing from elsewhere but the tile server) and friends."""
    tile_origin = ""
    if tiles:
        parts = urlsplit(tiles)
        tile_origin = f" {parts.scheme}://{parts.netloc}"
    policy = (f"default-src 'self'; img-src 'self' data:{tile_origin}; script-src 'self'; style-src 'self'; "
              "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")

    class Headers:
        def __init__(self, app) -> None:
            self.app = app

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http":
                await self.app(scope, receive, send)
                return

            async def sending(message) -> None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    headers += [(b"content-security-policy", policy.encode()), (b"x-frame-options", b"DENY"),
                                (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
                    if not scope["path"].startswith("/static/"):
                        headers.append((b"cache-control", b"no-store"))
                    message["headers"] = headers
                await send(message)

            await self.app(scope, receive, sending)

    return Headers


def create_app(state: ConsoleState) -> Starlette:
    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/login/once/{token}", login_once, methods=["GET"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", portfolio, methods=["GET"]),
        Route("/portfolio/rows", portfolio_rows, methods=["GET"]),
        Route("/assets/{device}/{asset}", asset_page, methods=["GET"]),
        Route("/assets/{device}/{asset}/live", asset_live, methods=["GET"]),
        Route("/devices/{device}/evidence.jsonl", evidence, methods=["GET"]),
        Route("/devices/{device}/evidence.bundle.json", evidence_bundle, methods=["GET"]),
        Route("/alarms/ack", acknowledge, methods=["POST"]),
        Route("/gaps/review", review_gap, methods=["POST"]),
        Route("/commands/inspect", inspect, methods=["POST"]),
        Route("/commands/permit", permit, methods=["POST"]),
        Route("/admin", admin, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/me", api_me, methods=["GET"]),
        Route("/api/portfolio", api_portfolio, methods=["GET"]),
        Route("/api/assets/{device}/{asset}", api_asset, methods=["GET"]),
        Route("/api/alarms/ack", acknowledge, methods=["POST"]),
        Route("/api/gaps/review", review_gap, methods=["POST"]),
        Route("/api/commands/inspect", inspect, methods=["POST"]),
        Route("/api/commands/permit", permit, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(security_headers(state.tiles))
    app.state.console = state
    app.state.templates = _environment(state.tiles)
    app.state.metrics = registry_for(state.data_dir, state.portfolio, state.records, state.judged, state.store_url)
    return app
