"""Child process for the spool SIGKILL test: appends (and now and then acks) in a loop until killed.

Run as `python -I spool_crash_child.py REPO DB MAX_BYTES ENVELOPES`. ENVELOPES is
a file of pre-built envelopes (`tests.kit.envelope_file`), so this child
imports nothing but the spool and starts fast. After each operation returns
it reports on stdout, unbuffered, one line:

    o HEAD          spool opened; HEAD is the chain head seq or -1
    a SEQ STORED    append(envelope SEQ) returned STORED (1 stored, 0 dropped)
    p SEQ SEQ ...   about to ack these seqs (peeked)
    k N             the ack returned, N deleted
"""
from __future__ import annotations

import os
import sys


def main() -> None:
    repo, db, max_bytes, envelope_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sys.path.insert(0, repo)
    from agent.spool import Spool
    from tests.kit.envelope_file import read_envelope_file

    envelopes = read_envelope_file(envelope_file)
    spool = Spool.open(db, max_bytes=max_bytes, synchronous="FULL")
    head = spool.head()
    os.write(1, b"o %d\n" % (head.seq if head else -1))
    seq = head.seq + 1 if head else 0
    while seq < len(envelopes):
        stored = spool.append(envelopes[seq])
        os.write(1, b"a %d %d\n" % (seq, stored))
        seq += 1
        if seq % 16 == 0:  # the uplink: the lender acks a batch now and then
            batch = [e.seq for e in spool.peek(8, 1 << 20)]
            os.write(1, b"p " + b" ".join(b"%d" % s for s in batch) + b"\n")
            deleted = spool.ack(batch)
            os.write(1, b"k %d\n" % deleted)
    os.write(1, b"e\n")  # out of envelopes: wait to be killed
    os.read(0, 1)


if __name__ == "__main__":
    main()
