"""Reading a tensor name in pieces: read-ahead on a thread pool, and repeated passes.

The engine reads each output tensor's inputs either whole or, when they are large and the merge
method can run on chunks, as contiguous flat chunks (`TensorSource.read_range`). A method that needs
whole-tensor statistics iterates the chunks more than once; `Pieces` keeps them between passes
when they are small enough (always on a GPU) and otherwise reads them again from the page cache,
so memory stays bounded by a chunk group whatever the model's size.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import torch
from torch import Tensor

from .sources import TensorSource

Reads = tuple[tuple[TensorSource, str], ...]
"""The inputs of one output tensor: (source, name of the tensor in it), in source order."""
Key = tuple[Reads, int, int]  # (inputs, first flat element, end)


class Reader:
    """Reads pieces (inputs, start, stop), on a thread pool ahead of use."""

    def __init__(self, workers: int, pin: bool):
        self._pin = pin
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read") if workers else None
        self._ahead: dict[Key, Future] = {}

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, key: Key) -> list[Tensor]:
        reads, start, stop = key
        return [src.read_range(name, start, stop, pin_memory=self._pin) for src, name in reads]

    def prefetch(self, key: Key) -> None:
        if self._pool is not None and key not in self._ahead:
            self._ahead[key] = self._pool.submit(self._read, key)

    def take(self, key: Key) -> list[Tensor]:
        fut = self._ahead.pop(key, None)
        return fut.result() if fut is not None else self._read(key)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


class Pieces:
    """The pieces of one output tensor, in flat order, on the compute device: the whole tensor,
    or chunks of a large one. Iterating again is a new pass: the chunks are kept from the first
    pass if `cache` (the plan decides: they fit its cache budget, always on a GPU, where device
    memory holds a few tensor groups), else read again (from the page cache)."""

    def __init__(self, reader: Reader, reads: Reads, ranges: tuple[tuple[int, int], ...], device: torch.device,
                 depth: int, cache: bool, has_base: bool):  # fmt: skip
        self.reads, self.ranges, self._has_base = reads, ranges, has_base
        self._reader, self._device, self._depth, self._cache_ok = reader, device, depth, cache
        self._cache: list[tuple[int, int, list[Tensor]]] | None = None

    def __call__(self, then: Key | None = None) -> Iterator[tuple[int, int, list[Tensor]]]:
        """One pass: (start, stop, raw tensors of every source); prefetches `then` near the end."""
        if self._cache is not None:
            if then is not None:
                self._reader.prefetch(then)
            yield from self._cache
            return
        keys = [(self.reads, *r) for r in self.ranges] + ([then] if then is not None else [])
        kept = [] if self._cache_ok else None
        for i in range(len(self.ranges)):
            for ahead in keys[i + 1 : i + 1 + self._depth]:
                self._reader.prefetch(ahead)
            raw = [t.to(self._device, non_blocking=True) for t in self._reader.take(keys[i])]
            item = (*self.ranges[i], raw)
            if kept is not None:
                kept.append(item)
            yield item
        if kept is not None:
            self._cache = kept

    def chunks(self) -> Iterator[tuple[int, Tensor | None, list[Tensor]]]:
        """A pass in the form a method's `ChunkedForm` reads: (start, base chunk, model chunks)."""
        for start, _, raw in self():
            yield (start, raw[0], raw[1:]) if self._has_base else (start, None, raw)
