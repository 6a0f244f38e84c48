"""The stand-in lender in its own process, for restart and crash tests.

    python uplink_lender_child.py REPO CONTEXTS_ROOT PORT

Prints ``ready`` once serving, then ``batch <seq>,<seq>,...`` for every batch
it processes (before answering), so the parent sees exactly what was processed.
SIGTERM closes the OSCORE contexts cleanly; SIGKILL is the crash.
"""
from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path


async def main(root: Path, port: int) -> None:
    from lender.enrollment.contexts import LenderCredentials
    from telemetry.envelope import decode
    from tests.kit.uplink import AckLender

    credentials = LenderCredentials.load(root)
    lender = AckLender(credentials=credentials)
    handle = lender.handle

    def reporting_handle(request):
        response = handle(request)
        if lender.batches and lender.batches[-1].envelopes is not getattr(reporting_handle, "last", None):
            reporting_handle.last = lender.batches[-1].envelopes
            print("batch " + ",".join(str(decode(raw).seq) for raw in lender.batches[-1].envelopes), flush=True)
        return response

    lender.handle = reporting_handle
    await lender.start(port)
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    print("ready", flush=True)
    await stopped.wait()
    await lender.stop()
    credentials.close()


if __name__ == "__main__":
    repo, root, port = sys.argv[1:4]
    sys.path.insert(0, repo)
    asyncio.run(main(Path(root), int(port)))
