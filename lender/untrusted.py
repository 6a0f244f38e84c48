"""Text from outside (an id a peer sent, a decoder's complaint about its bytes), made safe to show.

`shown(text)` escapes every character that could end a log line, move or
colour a terminal's cursor, or reorder what is displayed — C0 and C1
controls, DEL, Unicode format and separator characters such as U+202E — as
``\\n``, ``\\x1b``, ``\\u202e``; printable text, in any script, stays as it is.
`EscapingFilter` does the same to every log record's message, so a line
written from an attacker's bytes is still one line, saying what it is; the
lender's commands install it (`escape_logs`) and print attacker text through
`shown`.
"""
from __future__ import annotations

import logging


def shown(text: object, limit: int | None = None) -> str:
    """`text` (any object, as str) with every non-printable character escaped, cut to `limit` characters."""
    text = text if isinstance(text, str) else str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return text


class EscapingFilter(logging.Filter):
    """Escapes each record's formatted message (`shown`); the traceback of an exception is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as it would
            return True
        escaped = shown(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


def escape_logs(logger: logging.Logger | None = None) -> None:
    """Put an `EscapingFilter` on every handler of `logger` (the root logger by default), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, EscapingFilter) for f in handler.filters):
            handler.addFilter(EscapingFilter())
