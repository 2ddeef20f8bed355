"""Sharded safetensors output, written tensor by tensor into a staging folder.

The shard layout (which tensor goes to which `model-0000i-of-0000n.safetensors`, split as
`huggingface_hub.split_state_dict_into_shards_factory` splits, on (dtype, shape) alone: the
torch flavour imports torch.distributed, 1.4 s of start-up) and every header are fixed before the
first tensor is computed, since output names, shapes and dtypes are known up front. Each
tensor is then written at its offset with `os.pwrite` as soon as it exists, in any order,
so no shard is ever buffered in memory. The folder is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from ..errors import ConfigError, TensorError
from .format import build_header
from ..runtime.names import SAFETENSORS_INDEX_FILE

_PATTERN = "model{suffix}.safetensors"


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000, '500MiB' -> 524_288_000, ints pass through (bytes)."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = text.strip().upper()
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    if unit not in units or not num:
        raise ConfigError(f"size '{text}' is not understood; use e.g. 5GB, 500MB, 2GiB")
    return int(float(num) * units[unit])


class ShardedWriter:
    """Write tensors of a known layout into sharded safetensors files under `folder`."""

    def __init__(
        self,
        folder: Path,
        entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
        max_shard_size: int,
        metadata: dict[str, str] | None = None,
    ):
        from huggingface_hub import split_state_dict_into_shards_factory  # imported when writing, not at start-up

        self.folder = folder
        by_name = {name: (dtype, shape) for name, dtype, shape in entries}
        split = split_state_dict_into_shards_factory(
            by_name, get_storage_size=lambda meta: _nbytes(*meta), filename_pattern=_PATTERN, max_shard_size=max_shard_size
        )
        self._where: dict[str, tuple[int, int, int]] = {}  # name -> (fd, offset, nbytes)
        self._fds: list[int] = []
        self._left: dict[str, int] = {}
        self.bytes_written = 0
        for filename, names in split.filename_to_tensors.items():
            layout = [(n, *by_name[n]) for n in names]
            header, offsets, size = build_header(layout, {"format": "pt", **(metadata or {})})
            fd = os.open(folder / filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            os.ftruncate(fd, size)
            os.pwrite(fd, header, 0)
            for n in names:
                dtype, shape = by_name[n]
                nbytes = _nbytes(dtype, shape)
                self._where[n] = (fd, offsets[n], nbytes)
                self._left[n] = nbytes  # bytes not written yet
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            (folder / SAFETENSORS_INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        self.files = list(split.filename_to_tensors)

    def write(self, name: str, tensor: torch.Tensor, start: int = 0) -> None:
        """Write `tensor` as tensor `name`, or, given `start`, as its flat elements from `start` on."""
        fd, offset, nbytes = self._where[name]
        data = tensor.detach().contiguous()
        if data.device.type != "cpu":
            data = data.cpu()
        view = memoryview(data.reshape(-1).view(torch.uint8).numpy())  # flat first: 0-d tensors and size-1 dims with odd strides have no byte view
        first = start * data.element_size()
        if first + len(view) > nbytes:
            raise TensorError(f"output {name}: {len(view)} bytes at byte {first}, layout expects {nbytes}")
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + first + done)
        self._left[name] -= len(view)
        self.bytes_written += len(view)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def finish(self) -> None:
        """Check that every tensor of the layout was written."""
        pending = sorted(n for n, left in self._left.items() if left)
        if pending:
            raise TensorError(f"output incomplete: {len(pending)} tensor(s) not fully written, e.g. {pending[0]}")


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    n = torch.empty((), dtype=dtype).element_size()
    for s in shape:
        n *= s
    return n


class AsyncWrites:
    """Hands merged pieces to `sink` on one writer thread, at most two pending (so the compute
    thread runs ahead of the disk by one piece, never by a whole model)."""

    def __init__(self, sink: Callable[[str, torch.Tensor, int], None]):
        self._sink, self._pool, self._pending = sink, ThreadPoolExecutor(1, thread_name_prefix="write"), deque()

    def put(self, name: str, tensor: torch.Tensor, start: int) -> None:
        while len(self._pending) >= 2:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._sink, name, tensor, start))

    def __enter__(self) -> "AsyncWrites":
        return self

    def __exit__(self, kind, *exc) -> None:
        try:
            pending: list[Future] = list(self._pending) if kind is None else []
            for w in pending:
                w.result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=kind is not None)
