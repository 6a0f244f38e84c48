"""What the technician sees: steps, progress bars, the pass/fail table, one-line failures, or JSON for scripts.

Everything for a person goes to stderr (so ``--json`` output on stdout stays
clean for a script), progress bars only when stderr is a terminal.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import TextIO


class Console:
    """The technician's terminal, or a quiet JSON emitter (`json_mode`)."""

    def __init__(self, *, json_mode: bool = False, stream: TextIO | None = None, out: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self.stream = stream or sys.stderr
        self.out = out or sys.stdout
        self._bar_shown = False
        self._last_draw = 0.0

    @property
    def interactive(self) -> bool:
        return not self.json_mode and getattr(self.stream, "isatty", lambda: False)()

    def step(self, text: str) -> None:
        if not self.json_mode:
            self._end_bar()
            print(f"  {text}", file=self.stream, flush=True)

    def progress(self, done: int, total: int, label: str) -> None:
        """A bar redrawn in place (at most 20 times a second); silent unless stderr is a terminal."""
        if not self.interactive:
            return
        now = time.monotonic()
        if done < total and now - self._last_draw < 0.05:
            return
        self._last_draw = now
        width = 30
        filled = int(width * done / total) if total else width
        percent = int(100 * done / total) if total else 100
        line = f"\r  [{'#' * filled}{'.' * (width - filled)}] {percent:3d}% {label[:40]:<40}"
        self.stream.write(line)
        self.stream.flush()
        self._bar_shown = True
        if done >= total:
            self._end_bar()

    def _end_bar(self) -> None:
        if self._bar_shown:
            self.stream.write("\n")
            self.stream.flush()
            self._bar_shown = False

    def failure(self, command: str, message: str) -> None:
        """One line: what went wrong and what to do (the error's message says both)."""
        self._end_bar()
        text = " ".join(str(message).split())
        if self.json_mode:
            print(json.dumps({"ok": False, "error": text}), file=self.out, flush=True)
        print(f"pledgewatch provision {command}: {text}", file=self.stream, flush=True)

    def result(self, data: dict, lines: Sequence[str] = ()) -> None:
        self._end_bar()
        if self.json_mode:
            print(json.dumps({"ok": True, **data}, default=str), file=self.out, flush=True)
            return
        for line in lines:
            print(line, file=self.out, flush=True)

    def table(self, rows: Sequence[tuple[str, bool, str]]) -> list[str]:
        """The pre-flight's pass/fail table as lines."""
        width = max([len(name) for name, _, _ in rows] + [5])
        lines = [f"  {'CHECK':<{width}}  RESULT  DETAIL"]
        for name, passed, detail in rows:
            lines.append(f"  {name:<{width}}  {'PASS' if passed else 'FAIL':<6}  {detail}")
        return lines
