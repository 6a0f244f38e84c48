"""Benchmark: AT round trips per second through the AT channel vs a bare pyserial loop.

Both talk to the same simulated RM520N (`hil.sim.modem`) over the same kind
of pseudo-terminal in the same run, alternating in rounds so that machine
noise hits both alike. One round trip is ``AT`` → ``OK`` with echo on, as a
modem ships. The bare loop is what a script would do: `Serial.write` then
`Serial.readline` until the ``OK`` line. The channel does everything the
product needs on top (classification, URC dispatch, timeouts, counters).

Prints one JSON object: the channel's rate with the event-loop fd reader (the
default) and with the reader thread, the bare loop's rate, and
``ratio`` = channel / bare (the target is >= 0.7).
"""
from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import serial

from drivers.at import AtChannel, ChannelConfig
from hil.sim.modem import ModemSimulator

ROUNDS = 5
PER_ROUND = 600


def _raw_round(path: str, n: int) -> float:
    port = serial.Serial(path, 115200, timeout=2)
    try:
        port.reset_input_buffer()
        start = time.perf_counter()
        for _ in range(n):
            port.write(b"AT\r")
            while True:
                line = port.readline()
                if line == b"OK\r\n":
                    break
                if not line:
                    raise RuntimeError("bare loop: no OK within 2 s")
        return n / (time.perf_counter() - start)
    finally:
        port.close()


async def _channel_round(path: str, n: int, reader: str) -> float:
    async with AtChannel(ChannelConfig(path, reader=reader)) as ch:  # type: ignore[arg-type]
        await ch.command("AT")
        start = time.perf_counter()
        for _ in range(n):
            await ch.command("AT")
        return n / (time.perf_counter() - start)


def run(rounds: int = ROUNDS, per_round: int = PER_ROUND) -> dict[str, float | int | str]:
    with tempfile.TemporaryDirectory(prefix="bench-at-") as tmp, \
            ModemSimulator("rm520n", link=Path(tmp) / "modem") as sim:
        raw: list[float] = []
        fd: list[float] = []
        thread: list[float] = []
        for _ in range(rounds):
            raw.append(_raw_round(sim.path, per_round))
            fd.append(asyncio.run(_channel_round(sim.path, per_round, "fd")))
            thread.append(asyncio.run(_channel_round(sim.path, per_round, "thread")))
        channel, bare = statistics.median(fd), statistics.median(raw)
        return {
            "channel_round_trips_per_s": round(channel, 1),
            "raw_round_trips_per_s": round(bare, 1),
            "ratio": round(channel / bare, 3),
            "channel_thread_round_trips_per_s": round(statistics.median(thread), 1),
            "rounds": rounds,
            "round_trips_per_round": per_round,
            "command": "AT (echo on) -> OK, simulated rm520n on a pty",
        }


def main() -> None:
    json.dump(run(), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
