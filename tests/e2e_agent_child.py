"""A gateway agent for the end-to-end kill test: a fast simulated counter sensor, the real daemon and uplink.

    python tests/e2e_agent_child.py ROOT OSCORE_CONTEXT LENDER_URI [drain]

Prints "ready" once the chain is resumed. With `drain` it samples nothing and
exits once the spool is empty (the last run after the power cuts).
"""
import asyncio
import signal
import sys
import time
from pathlib import Path

from drivers.sensor import Sample
from durable.keyfile import read_key
from telemetry.identity import Identity
from tests.kit.agent import QUICK_UPLINK, build_agent


class Counter:
    """A simulated sensor that reports a rising count every 10 ms."""

    name, interval = "count", 0.01

    def __init__(self) -> None:
        self.value = 0

    async def read(self) -> list[Sample]:
        self.value += 1
        return [Sample(self.name, self.value, None, time.time())]


async def main(root: Path, context: Path, lender: str, drain: bool) -> None:
    agent = build_agent(root, device="gw-e2e", identity=Identity(read_key(root / "device.key")),
                        sensors=[] if drain else [Counter()], lender=lender, security_context=context, uplink=QUICK_UPLINK)
    spool = agent.spool
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    running = asyncio.create_task(agent.run(stop))
    await agent.started.wait()
    print("ready", flush=True)
    if drain:
        while len(spool):
            await asyncio.sleep(0.05)
        stop.set()
    await running
    spool.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], len(sys.argv) > 4 and sys.argv[4] == "drain"))
