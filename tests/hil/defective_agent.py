"""A deliberately defective agent, for the rig's own test: its spool deletes every batch as the uplink takes it,
before the lender has acked anything. Never product code: the defect is a subclass patched in here.

    python tests/hil/defective_agent.py DELETED_LOG CONFIG

runs `pledgewatch agent run --config CONFIG` with that spool, and appends each
batch it deleted early (one line of seqs) to DELETED_LOG.
"""
from __future__ import annotations

import sys
from pathlib import Path

import agent.cli
from agent.spool import Spool
from pledgewatch.cli import main


class SpoolThatDeletesBeforeTheAck(Spool):
    """The bug: `peek` hands the uplink a batch and deletes it at once, acked or not."""

    deleted_log: Path

    def peek(self, max_count: int = 64, max_bytes: int = 64 * 1024):
        batch = super().peek(max_count, max_bytes)
        if batch:
            self.ack([item.seq for item in batch])
            with open(self.deleted_log, "a", encoding="ascii") as log:
                log.write(" ".join(str(item.seq) for item in batch) + "\n")
        return batch


if __name__ == "__main__":
    deleted_log, config = sys.argv[1:3]
    SpoolThatDeletesBeforeTheAck.deleted_log = Path(deleted_log)
    agent.cli.Spool = SpoolThatDeletesBeforeTheAck
    sys.exit(main(["agent", "run", "--config", config]))
