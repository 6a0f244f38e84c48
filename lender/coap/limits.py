"""Token buckets by key (a source address, a claimed device id), in a table of bounded size.

Pure: no I/O, no event loop; the clock is passed in. `Budgets.take(key)`
spends one token of the key's bucket, refilled at `rate` per second up to
`burst`; a key not seen yet starts full. The table holds at most `capacity`
keys: the least recently used is forgotten first, so a sender that sprays
keys (a new source address per datagram) costs a bounded amount of memory
and gains at most one burst per forgotten key (a global `Budgets` with one
key bounds that too).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    """A budget: `per_s` tokens a second, at most `burst` saved up."""

    per_s: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_s <= 0 or self.burst < 1:
            raise ValueError(f"a rate needs per_s > 0 and burst >= 1, got {self.per_s}/s, burst {self.burst}")


class Budgets:
    """One token bucket per key, at most `capacity` keys (least recently used forgotten first)."""

    def __init__(self, rate: Rate, *, capacity: int = 16384, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()  # key -> [tokens, when]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, cost: float = 1.0) -> bool:
        """Spend `cost` tokens of `key`'s bucket; False (nothing spent) when it holds fewer."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [self.rate.burst, now]
            if len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.rate.burst, bucket[0] + (now - bucket[1]) * self.rate.per_s)
            bucket[1] = now
        if bucket[0] < cost:
            return False
        bucket[0] -= cost
        return True

    def wait(self, key: Hashable, cost: float = 1.0) -> float:
        """Seconds until `key` could spend `cost` tokens (0 when it can now); spends nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(self.rate.burst, bucket[0] + (self._clock() - bucket[1]) * self.rate.per_s)
        return max(0.0, (cost - tokens) / self.rate.per_s)
