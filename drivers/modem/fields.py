"""Pure helpers that split AT response lines into fields and convert them, raising typed errors.

Every modem parser goes through here, so that a malformed answer always
becomes a `ModemResponseError` saying which command, which line and which
field was wrong — never an `IndexError` or a bare `ValueError`.
"""
from __future__ import annotations

from collections.abc import Sequence

from drivers.exc import ModemResponseError

#: Quectel prints "-" for a parameter it cannot report in the current state (RG50xQ&RM5xxQ AT Commands
#: Manual, AT+QENG: e.g. <tx_power> while idle) and -32768 for an invalid measurement (same manual,
#: AT+QRSRP/AT+QENG); both become None.
_MISSING = frozenset({"", "-", "--"})
INVALID_MEASUREMENT = -32768


def split_csv(payload: str) -> list[tuple[str, bool]]:
    """Split an AT parameter list on commas outside double quotes: [(value, was_quoted)]."""
    out: list[tuple[str, bool]] = []
    cur: list[str] = []
    quoted = False
    was_quoted = False
    for ch in payload:
        if ch == '"':
            quoted = not quoted
            was_quoted = True
            continue
        if ch == "," and not quoted:
            out.append(("".join(cur).strip(), was_quoted))
            cur, was_quoted = [], False
            continue
        cur.append(ch)
    out.append(("".join(cur).strip(), was_quoted))
    return out


class Fields:
    """The parameters of one response line, with converters that fail clearly."""

    __slots__ = ("command", "line", "values", "quoted", "syntax")

    def __init__(self, command: str, line: str, payload: str, syntax: str) -> None:
        self.command = command
        self.line = line
        self.syntax = syntax
        parts = split_csv(payload)
        self.values = [v for v, _ in parts]
        self.quoted = [q for _, q in parts]

    def __len__(self) -> int:
        return len(self.values)

    def fail(self, problem: str) -> ModemResponseError:
        return ModemResponseError(
            f"{self.command} answered {self.line!r}: {problem}; expected {self.syntax}",
            command=self.command, lines=(self.line,))

    def need(self, count: int) -> None:
        if len(self.values) < count:
            raise self.fail(f"{len(self.values)} field(s), need at least {count}")

    def text(self, i: int, name: str) -> str:
        if i >= len(self.values):
            raise self.fail(f"{name} is missing")
        return self.values[i]

    def opt_text(self, i: int) -> str | None:
        if i >= len(self.values):
            return None
        v = self.values[i]
        return None if v in _MISSING else v

    def int(self, i: int, name: str, *, base: int = 10) -> int:
        v = self.text(i, name)
        try:
            return int(v, base)
        except ValueError:
            raise self.fail(f"{name} {v!r} is not a base-{base} number") from None

    def opt_int(self, i: int, name: str, *, base: int = 10) -> int | None:
        if i >= len(self.values) or self.values[i] in _MISSING:
            return None
        n = self.int(i, name, base=base)
        return None if n == INVALID_MEASUREMENT else n

    def opt_float(self, i: int, name: str, *, scale: float = 1.0) -> float | None:
        if i >= len(self.values) or self.values[i] in _MISSING:
            return None
        v = self.values[i]
        try:
            x = float(v)
        except ValueError:
            raise self.fail(f"{name} {v!r} is not a number") from None
        if x != x or x in (float("inf"), float("-inf")):
            raise self.fail(f"{name} {v!r} is not a finite number")
        if x == INVALID_MEASUREMENT:
            return None
        return x * scale


def payloads(command: str, lines: Sequence[str], prefix: str) -> list[tuple[str, str]]:
    """[(line, text after the prefix)] for every line starting with `prefix` (``"+CSQ:"``)."""
    return [(line, line[len(prefix):].strip()) for line in lines if line.startswith(prefix)]


def single(command: str, lines: Sequence[str], prefix: str, syntax: str) -> Fields:
    """The fields of the one line with `prefix`; a typed error when it is not there."""
    for line in lines:
        if line.startswith(prefix):
            return Fields(command, line, line[len(prefix):].strip(), syntax)
    raise ModemResponseError(f"{command} answered without a {prefix} line (got {list(lines)[:4]!r}); "
                             f"expected {syntax}", command=command, lines=tuple(lines))


def luhn_ok(digits: str) -> bool:
    """The Luhn check used by IMEI check digits (3GPP TS 23.003 §6.2.1, Annex B)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0
