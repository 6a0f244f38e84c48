"""A gateway uplink in its own process, for kill tests: drains the spool to the lender until killed or SIGTERMed.

    python uplink_agent_child.py REPO SPOOL CONTEXT LENDER_URI [--until-empty]

Real clock here (the parent never asserts on timing); small batches so one
run is many exchanges; SIGTERM closes cleanly (exact sequence number written).
With --until-empty it sends until the spool is empty, closes and exits 0.
"""
from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path


async def main(spool_path: Path, context: Path, lender: str, until_empty: bool) -> None:
    from agent.spool import Spool
    from agent.uplink import Uplink, UplinkConfig

    config = UplinkConfig(lender=lender, security_context=context, batch_interval=0.2, max_batch_count=4,
                          backoff_initial=0.05, backoff_cap=0.5, ack_timeout=0.2, max_retransmit=2)
    spool = Spool.open(spool_path, synchronous="NORMAL")
    uplink = Uplink(config, spool)
    if until_empty:
        async with uplink:
            while len(spool):
                exchange = await uplink.send_once()
                await asyncio.sleep(uplink.delay_after(exchange))
        spool.close()
        return
    task = asyncio.ensure_future(uplink.run())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        await uplink.close()
        spool.close()


if __name__ == "__main__":
    repo, spool_path, context, lender = sys.argv[1:5]
    sys.path.insert(0, repo)
    asyncio.run(main(Path(spool_path), Path(context), lender, "--until-empty" in sys.argv[5:]))
