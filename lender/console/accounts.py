"""Staff accounts of the console: argon2id passwords, roles, sessions, login rate limits, one-time login links.

Roles are ordered: a **viewer** reads every page and the JSON API; an
**operator** also acknowledges alarms and reviews gaps; an **admin** also sees
the accounts and the audit log. Accounts are managed with
``pledgewatch lender users add|remove|list`` (lender.cli), the password read
from standard input.

Passwords are hashed with argon2id (argon2-cffi's `PasswordHasher`, its
RFC 9106 "low memory" defaults: t=3, m=64 MiB, p=4). A session is a random
256-bit id in a cookie; the file keeps only its SHA-256, with a CSRF token
drawn for that session. Sessions end after `IDLE_S` without a request, or
`LIFETIME_S` after login, or when the user is removed.

Login attempts are limited per account name and per client address: after
`MAX_FAILURES` failures within `FAILURE_WINDOW_S`, further attempts are
refused (HTTP 429) until the oldest failure leaves the window, whether or not
the password is right — a guesser learns nothing from trying.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from lender.console.records import ConsoleRecords
from lender.exc import AccountError, UnknownAccountError

ROLES = ("viewer", "operator", "admin")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
MIN_PASSWORD = 10
IDLE_S = 3600.0
LIFETIME_S = 12 * 3600.0
MAX_FAILURES = 5
FAILURE_WINDOW_S = 900.0
LINK_LIFETIME_S = 900.0

_hasher = PasswordHasher()  # argon2id by default
# Verified against when the name is unknown, so a wrong name costs the same time as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    created_at: float

    def may(self, role: str) -> bool:
        """True when this user's role is `role` or above it."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str
    created_at: float


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Accounts:
    """Users, sessions and login attempts in the console's records."""

    def __init__(self, records: ConsoleRecords) -> None:
        self.records = records

    # --- users ---

    def add(self, name: str, role: str, password: str, *, now: float) -> User:
        if not NAME.match(name):
            raise AccountError(f"user name {name!r}: use 1..64 of A-Z a-z 0-9 . _ @ - starting with a letter or digit")
        if role not in ROLES:
            raise AccountError(f"role {role!r} must be one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
        hashed = _hasher.hash(password)
        with self.records.transaction() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise AccountError(f"user {name!r} exists already (remove it first to change it)")
            conn.execute("INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                         (name, role, hashed, now))
            conn.execute("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, 'cli', 'user-add', ?, ?)",
                         (now, name, role))
        return User(name, role, now)

    def remove(self, name: str, *, now: float) -> None:
        """Remove the account; its sessions and login links end with it."""
        with self.records.transaction() as conn:
            if not conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount:
                raise UnknownAccountError(f"no user {name!r}")
            conn.execute("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, 'cli', 'user-remove', ?, '')",
                         (now, name))

    def users(self) -> list[User]:
        return [User(*row) for row in self.records.query("SELECT name, role, created_at FROM users ORDER BY name")]

    def user(self, name: str) -> User | None:
        rows = self.records.query("SELECT name, role, created_at FROM users WHERE name = ?", (name,))
        return User(*rows[0]) if rows else None

    # --- logging in ---

    def throttled(self, keys: tuple[str, ...], *, now: float) -> float:
        """Seconds until one more attempt is allowed for every one of `keys` (0: allowed now)."""
        wait = 0.0
        for key in keys:
            rows = self.records.query("SELECT at FROM login_failures WHERE key = ? AND at > ? ORDER BY at",
                                      (key, now - FAILURE_WINDOW_S))
            if len(rows) >= MAX_FAILURES:
                wait = max(wait, rows[-MAX_FAILURES][0] + FAILURE_WINDOW_S - now)
        return wait

    def check_password(self, name: str, password: str, *, keys: tuple[str, ...], now: float) -> User | None:
        """The user if `password` is theirs; a failure is counted against every one of `keys`."""
        rows = self.records.query("SELECT name, role, created_at, password_hash FROM users WHERE name = ?", (name,))
        stored = rows[0][3] if rows else _DUMMY_HASH
        try:
            good = _hasher.verify(stored, password) and bool(rows)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            good = False
        if not good:
            with self.records.transaction() as conn:
                conn.execute("DELETE FROM login_failures WHERE at < ?", (now - FAILURE_WINDOW_S,))
                conn.executemany("INSERT INTO login_failures (key, at) VALUES (?, ?)", [(k, now) for k in keys])
                conn.execute("INSERT INTO audit (at, actor, action, target, detail) VALUES"
                             " (?, ?, 'login-failed', ?, '')", (now, name[:64], keys[-1] if keys else ""))
            return None
        if _hasher.check_needs_rehash(stored):
            with self.records.transaction() as conn:
                conn.execute("UPDATE users SET password_hash = ? WHERE name = ?", (_hasher.hash(password), name))
        return User(*rows[0][:3])

    def login_link(self, name: str, *, now: float) -> str:
        """A token that logs `name` in once, within `LINK_LIFETIME_S` (for `make demo` and first logins)."""
        if self.user(name) is None:
            raise UnknownAccountError(f"no user {name!r}")
        token = secrets.token_urlsafe(32)
        with self.records.transaction() as conn:
            conn.execute("INSERT INTO login_links (token_hash, user, expires_at) VALUES (?, ?, ?)",
                         (_digest(token), name, now + LINK_LIFETIME_S))
        return token

    def redeem_link(self, token: str, *, now: float) -> User | None:
        """The link's user, once: the link is deleted whether or not it was still valid."""
        with self.records.transaction() as conn:
            row = conn.execute("SELECT user, expires_at FROM login_links WHERE token_hash = ?",
                               (_digest(token),)).fetchone()
            conn.execute("DELETE FROM login_links WHERE token_hash = ? OR expires_at < ?", (_digest(token), now))
        if row is None or row[1] < now:
            return None
        return self.user(row[0])

    # --- sessions ---

    def open_session(self, user: User, *, now: float) -> str:
        """A new session for `user`; returns its id (for the cookie), kept here only as a hash."""
        token = secrets.token_urlsafe(32)
        with self.records.transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE last_used < ? OR created_at < ?", (now - IDLE_S, now - LIFETIME_S))
            conn.execute("INSERT INTO sessions (id_hash, user, csrf, created_at, last_used) VALUES (?, ?, ?, ?, ?)",
                         (_digest(token), user.name, secrets.token_urlsafe(32), now, now))
            conn.execute("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, 'login', ?, '')",
                         (now, user.name, user.role))
        return token

    def session(self, token: str | None, *, now: float) -> Session | None:
        """The live session `token` names, touched; None when there is none, it idled out or it is too old."""
        if not token or len(token) > 128:
            return None
        rows = self.records.query(
            "SELECT u.name, u.role, u.created_at, s.csrf, s.created_at, s.last_used FROM sessions s"
            " JOIN users u ON u.name = s.user WHERE s.id_hash = ?", (_digest(token),))
        if not rows:
            return None
        name, role, created, csrf, opened, used = rows[0]
        if used < now - IDLE_S or opened < now - LIFETIME_S:
            self.close_session(token)
            return None
        if now - used > 30:  # one write per half minute is enough to keep a session alive
            with self.records.transaction() as conn:
                conn.execute("UPDATE sessions SET last_used = ? WHERE id_hash = ?", (now, _digest(token)))
        return Session(User(name, role, created), csrf, opened)

    def close_session(self, token: str) -> None:
        with self.records.transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE id_hash = ?", (_digest(token),))


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a CSRF token."""
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
