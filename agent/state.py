"""The agent's small state documents, kept in TinyDB and written atomically.

What lives here is small and rarely written: the boot counter, the seq
ceiling (the highest seq the agent has reserved), the counters ceiling (the
highest signed alarm and gap counters that may have been used), the acked
watermark, the chain head at the last checkpoint, the latest receipt from the
lender (with the envelope it proves), the clean-shutdown flag, the
newest lender token and a snapshot of the configuration. TinyDB suits that (ARCHITECTURE.md); the envelopes
themselves live in the SQLite spool (agent.spool).

TinyDB's own JSONStorage rewrites its file in place, so a power cut mid-write
leaves half a file. `AtomicJSONStorage` writes through
`durable.files.atomic_write` (a temp file in the same directory, fsynced,
renamed over the old one, then the directory fsynced): after a crash the
file is the old version or the new one, whole.
The file carries a SHA-256 of its content, so a flipped byte is noticed, not
read as a smaller counter. A damaged file at open is moved aside
(`<name>.corrupt-<UTC time>`) with an error log line and `recovered_from` set:
the agent must then take its floor from elsewhere (the spool's chain head).

Never-decreasing values (boot counter, seq ceiling, counters ceiling, acked
watermark) refuse to go backwards (`StateValueError`). That guards against the
agent's own mistakes, not the borrower: root can restore an older copy of this
file and every value here goes back with it. The lender never trusts these
values for that; with a TPM key it sees a restore through the TPM's own count
of signatures (agent.recorder, durable.tpmcounter, lender.evidence.risks).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document

from agent.exc import StateCorruptError, StateUnavailableError, StateValueError
from durable.files import atomic_write, fsync_dir
from telemetry.receipt import DeliveryReceipt

log = logging.getLogger(__name__)

FORMAT = "pledgewatch-agent-state/1"
_AGENT, _CONFIG = "agent", "config"
_DOC = 1  # each table holds one document, id 1

_FRESH = {"boot": 0, "seq_ceiling": -1, "alarms_ceiling": 0, "gaps_ceiling": 0, "acked_watermark": -1,
          "chain_head": None, "clean_shutdown": True}
_COUNTERS = ("boot", "seq_ceiling", "alarms_ceiling", "gaps_ceiling", "acked_watermark")


def _canonical(tables: Mapping[str, Any]) -> bytes:
    return json.dumps(tables, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _encode(tables: Mapping[str, Any]) -> bytes:
    # Readable on the gateway (indented), checked over the canonical form.
    digest = hashlib.sha256(_canonical(tables)).hexdigest()
    return json.dumps({"format": FORMAT, "sha256": digest, "tables": tables}, indent=1, sort_keys=True,
                      allow_nan=False).encode() + b"\n"


def _decode(data: bytes) -> dict:
    try:
        outer = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise StateCorruptError(f"not JSON ({error})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise StateCorruptError(f"not a {FORMAT} file")
    tables, digest = outer.get("tables"), outer.get("sha256")
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise StateCorruptError("the tables are missing or not JSON objects")
    try:
        canonical = _canonical(tables)
    except ValueError as error:  # NaN or Infinity slipped in
        raise StateCorruptError(f"the tables hold a value JSON does not allow ({error})") from None
    if not isinstance(digest, str) or hashlib.sha256(canonical).hexdigest() != digest:
        raise StateCorruptError("the checksum does not match the content")
    return tables


class AtomicJSONStorage(Storage):
    """A TinyDB storage that never leaves a half-written file: temp file, fsync, replace, fsync dir."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._temp = self.path.with_name(self.path.name + ".tmp")

    def read(self) -> dict | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StateUnavailableError(f"state file {self.path}: cannot read: {error}") from error
        try:
            return _decode(data)
        except StateCorruptError as error:
            raise StateCorruptError(f"state file {self.path}: {error}") from None

    def write(self, data: dict) -> None:
        encoded = _encode(data)
        try:
            atomic_write(self.path, encoded, 0o600, temporary=self._temp)
        except OSError as error:
            raise StateUnavailableError(f"state file {self.path}: cannot write: {error}") from error


@dataclass(frozen=True, slots=True)
class RunStart:
    """What `begin_run` found: this run's boot number, and whether the last run ended cleanly."""

    boot: int
    previous_run_clean: bool


class AgentState:
    """The agent's durable counters and snapshots (see the module docstring). Single writer."""

    def __init__(self, path: Path, db: TinyDB, recovered_from: Path | None) -> None:
        # Use AgentState.open().
        self.path = path
        self.recovered_from = recovered_from
        self._db = db
        self._agent = db.table(_AGENT, cache_size=0)
        self._config = db.table(_CONFIG, cache_size=0)
        self._values = dict(_FRESH)
        self._values.update(self._agent.get(doc_id=_DOC) or {})
        if recovered_from is not None:
            self._values["clean_shutdown"] = False  # state was lost: nothing says the last run ended well

    @classmethod
    def open(cls, path: str | os.PathLike) -> AgentState:
        """Open (or create) the state file; a damaged one is moved aside and `recovered_from` says where."""
        path = Path(path)
        if not path.parent.is_dir():
            raise StateUnavailableError(f"state file {path}: directory {path.parent} does not exist")
        path.with_name(path.name + ".tmp").unlink(missing_ok=True)  # a write a crash interrupted
        recovered_from = None
        storage = AtomicJSONStorage(path)
        try:
            tables = storage.read()
            _validate(tables or {})
        except StateCorruptError as damage:
            recovered_from = _move_aside(path)
            log.error("%s; moved it aside to %s and starting from empty state: the agent must take its "
                      "seq floor from the spool's chain head and report the loss", damage, recovered_from)
        db = TinyDB(path, storage=AtomicJSONStorage)
        return cls(path, db, recovered_from)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AgentState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<AgentState {str(self.path)!r} boot={self.boot} seq_ceiling={self.seq_ceiling}>"

    # --- boots and shutdowns ----------------------------------------------

    @property
    def boot(self) -> int:
        """How many runs have begun (0 before the first)."""
        return self._values["boot"]

    def next_boot(self) -> int:
        """Increment and persist the boot counter; returns the new value."""
        self._put(boot=self.boot + 1)
        return self.boot

    def begin_run(self) -> RunStart:
        """At start: count the boot and clear the clean-shutdown flag in one write.

        `previous_run_clean` is False when the last run did not reach
        `mark_clean_shutdown` (a power cut or a kill): the agent reports that
        as a gap. A first-ever start counts as clean.
        """
        clean = bool(self._values["clean_shutdown"])
        self._put(boot=self.boot + 1, clean_shutdown=False)
        return RunStart(self.boot, clean)

    @property
    def clean_shutdown(self) -> bool:
        return bool(self._values["clean_shutdown"])

    def mark_clean_shutdown(self) -> None:
        """At a clean stop, after the spool is closed."""
        self._put(clean_shutdown=True)

    # --- sequence numbers ----------------------------------------------------

    @property
    def seq_ceiling(self) -> int:
        """The highest seq reserved so far (-1 if none): after a restart new seqs start above it."""
        return self._values["seq_ceiling"]

    def reserve_seqs(self, upto: int) -> None:
        """Persist that seqs up to `upto` may be used; never lowers the ceiling.

        The agent reserves blocks ahead (one write per block) so that even if
        the spool is lost a seq is never reused.
        """
        self._put(seq_ceiling=self._checked("seq_ceiling", upto))

    @property
    def counters_ceiling(self) -> tuple[int, int]:
        """(alarms, gaps): the highest signed counters reserved so far ((0, 0) if none).

        Like the seq ceiling, reserved before an envelope carrying them is
        appended, so a restart that lost the spool's chain head resumes the
        counters from here and never signs smaller ones.
        """
        return self._values["alarms_ceiling"], self._values["gaps_ceiling"]

    def reserve_counters(self, alarms: int, gaps: int) -> None:
        """Persist that counters up to (`alarms`, `gaps`) may be signed; never lowers either (no write then)."""
        for name, value in (("alarms", alarms), ("gaps", gaps)):
            if type(value) is not int or value < 0:
                raise StateValueError(f"{name} counter must be a non-negative integer, got {value!r}")
        held_alarms, held_gaps = self.counters_ceiling
        if alarms > held_alarms or gaps > held_gaps:
            self._put(alarms_ceiling=max(alarms, held_alarms), gaps_ceiling=max(gaps, held_gaps))

    @property
    def acked_watermark(self) -> int:
        """The highest seq the lender has acked (-1 if none)."""
        return self._values["acked_watermark"]

    def record_acked(self, seq: int) -> None:
        """Raise the acked watermark to `seq` (lower values are ignored: acks arrive out of order)."""
        if type(seq) is not int or seq < 0:
            raise StateValueError(f"acked seq must be a non-negative integer, got {seq!r}")
        if seq > self.acked_watermark:
            self._put(acked_watermark=seq)

    @property
    def chain_head(self) -> tuple[int, bytes] | None:
        """(seq, digest) the agent last checkpointed here (the spool keeps the per-append head)."""
        head = self._values["chain_head"]
        return (head["seq"], bytes.fromhex(head["digest"])) if head else None

    def record_chain_head(self, seq: int, digest: bytes) -> None:
        if type(seq) is not int or seq < 0 or not isinstance(digest, (bytes, bytearray)):
            raise StateValueError(f"chain head must be (seq >= 0, digest bytes), got {seq!r}, {digest!r}")
        current = self.chain_head
        if current is not None and seq < current[0]:
            raise StateValueError(f"chain head seq {seq} is below the recorded {current[0]}")
        self._put(chain_head={"seq": seq, "digest": bytes(digest).hex()})

    @property
    def latest_receipt(self) -> tuple[DeliveryReceipt, bytes] | None:
        """The newest receipt the lender gave (telemetry.receipt) and the bytes of the envelope it proves."""
        kept = self._values.get("receipt")
        if not kept:
            return None
        return (DeliveryReceipt(kept["seq"], kept["at"], base64.b64decode(kept["receipt"])),
                base64.b64decode(kept["envelope"]))

    def keep_receipt(self, receipt: DeliveryReceipt, envelope: bytes) -> bool:
        """Keep `receipt` (for `envelope`, its seq's bytes) if it is for a later seq than the one kept; True if kept.

        One receipt suffices: it proves the lender logged this envelope, and
        the chain links every earlier one to it.
        """
        current = self._values.get("receipt")
        if current and receipt.seq <= current["seq"]:
            return False
        self._put(receipt={"seq": receipt.seq, "at": receipt.at,
                           "receipt": base64.b64encode(receipt.receipt).decode("ascii"),
                           "envelope": base64.b64encode(bytes(envelope)).decode("ascii")})
        return True

    # --- configuration snapshot ----------------------------------------------

    @property
    def config_snapshot(self) -> dict | None:
        doc = self._config.get(doc_id=_DOC)
        return doc["snapshot"] if doc else None

    def save_config_snapshot(self, snapshot: Mapping[str, Any]) -> None:
        """Keep the configuration the agent is running with (JSON-able values only)."""
        try:
            json.dumps(snapshot, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise StateValueError(f"config snapshot must be JSON-serialisable: {error}") from None
        self._config.upsert(Document({"snapshot": dict(snapshot)}, doc_id=_DOC))

    # --- plumbing ----------------------------------------------------------------

    def _checked(self, name: str, value: object) -> int:
        if type(value) is not int or value < 0:
            raise StateValueError(f"{name} must be a non-negative integer, got {value!r}")
        if value < self._values[name]:
            raise StateValueError(f"{name} never goes backwards: {value} is below {self._values[name]}")
        return value

    def _put(self, **fields: Any) -> None:
        self._agent.upsert(Document(fields, doc_id=_DOC))  # one atomic file replace
        self._values.update(fields)


def _validate(tables: dict) -> None:
    """Raise StateCorruptError unless the agent document has the right shape and types."""
    doc = tables.get(_AGENT, {}).get(str(_DOC))
    if doc is None:
        return
    if not isinstance(doc, dict):
        raise StateCorruptError("the agent document is not an object")
    for name in _COUNTERS:
        if name in doc and (type(doc[name]) is not int or doc[name] < (-1 if name in ("seq_ceiling", "acked_watermark") else 0)):
            raise StateCorruptError(f"{name} is {doc[name]!r}, not a counter")
    if "clean_shutdown" in doc and type(doc["clean_shutdown"]) is not bool:
        raise StateCorruptError("clean_shutdown is not a boolean")
    head = doc.get("chain_head")
    if head is not None:
        try:
            valid = type(head["seq"]) is int and len(bytes.fromhex(head["digest"])) > 0
        except (TypeError, KeyError, ValueError):
            valid = False
        if not valid:
            raise StateCorruptError("chain_head is malformed")
    receipt = doc.get("receipt")
    if receipt is not None:
        try:
            valid = (type(receipt["seq"]) is int and type(receipt["at"]) is int
                     and base64.b64decode(receipt["receipt"], validate=True)
                     and base64.b64decode(receipt["envelope"], validate=True))
        except (TypeError, KeyError, ValueError):
            valid = False
        if not valid:
            raise StateCorruptError("the kept receipt is malformed")
    config = tables.get(_CONFIG, {}).get(str(_DOC))
    if config is not None and not (isinstance(config, dict) and isinstance(config.get("snapshot"), dict)):
        raise StateCorruptError("the config snapshot is malformed")


def _move_aside(path: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
        n += 1
    try:
        os.rename(path, aside)
        fsync_dir(path.parent)
    except OSError as error:
        raise StateUnavailableError(f"state file {path}: cannot move the damaged file aside: {error}") from error
    return aside
