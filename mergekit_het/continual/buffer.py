"""A class-balanced replay buffer whose content depends only on the data, not on the schedule.

Every example gets a key h(uid) (a stable hash of its pool id and the buffer's seed). With C
classes seen, each class keeps the m = max(1, ⌊M / C⌋) examples of smallest key among those it has
received (a bottom-k sketch, ALGORITHMS-addendum §16.3, the project's design). m never grows,
so an evicted example could never be among the final bottom m: the final buffer is the same
set for every order and chunking of the stream, and every class ends with min(n_c, m) examples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def example_key(uid: int, seed: int) -> int:
    """Stable 64-bit hash of (seed, uid) (the same on every machine and run)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{uid}".encode(), digest_size=8).digest(), "big")


class ClassBalancedBuffer:
    def __init__(self, memory: int, seed: int = 0) -> None:
        self.memory = memory
        self.seed = seed
        self.by_class: dict[int, list[tuple[int, int]]] = {}  # class -> sorted [(key, uid)]

    @property
    def per_class(self) -> int:
        return max(1, self.memory // max(len(self.by_class), 1))

    def add(self, uids: Iterable[int], labels: Iterable[int]) -> None:
        """Offer a chunk of examples; then shrink every class to the new per-class capacity."""
        for uid, c in zip(uids, labels):
            self.by_class.setdefault(int(c), []).append((example_key(int(uid), self.seed), int(uid)))
        m = self.per_class
        for c, items in self.by_class.items():
            self.by_class[c] = sorted(items)[:m]

    def uids(self) -> list[int]:
        """Buffer content in key order (a deterministic, schedule-free training order)."""
        return [u for _, u in sorted(kv for items in self.by_class.values() for kv in items)]

    def counts(self) -> dict[int, int]:
        return {c: len(items) for c, items in sorted(self.by_class.items())}

    def split(self, fraction: float) -> tuple[list[int], list[int]]:
        """(train, validation) uids: each class's lowest ⌊fraction · n_c⌋ keys are validation."""
        train, val = [], []
        for items in self.by_class.values():
            cut = int(fraction * len(items))
            val.extend(items[:cut])
            train.extend(items[cut:])
        return [u for _, u in sorted(train)], [u for _, u in sorted(val)]
