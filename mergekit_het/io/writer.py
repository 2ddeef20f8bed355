"""Sharded safetensors output, written tensor by tensor into a staging folder.

The shard layout (which tensor goes to which `model-0000i-of-0000n.safetensors`, split as
`huggingface_hub.split_state_dict_into_shards_factory` splits, on (dtype, shape) alone: the
torch flavour imports torch.distributed, 1.4 s of start-up) and every header are fixed before the
first tensor is computed, since output names, shapes and dtypes are known up front. Each
tensor is then written at its offset as soon as it exists, in any order (`OutputFile`: direct
I/O where the system allows it), so no shard is ever buffered in memory. The folder is renamed
into place only when complete.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from ..errors import TensorError
from .format import build_header
from ..runtime.names import SAFETENSORS_INDEX_FILE

_PATTERN = "model{suffix}.safetensors"


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
        self._where: dict[str, tuple[OutputFile, int, int]] = {}  # name -> (file, offset, nbytes)
        self._files: list[OutputFile] = []
        self._behind = WriteBehind() if _O_DIRECT else None
        self._left: dict[str, int] = {}
        self.bytes_written = 0
        try:
            for filename, names in split.filename_to_tensors.items():
                layout = [(n, *by_name[n]) for n in names]
                header, offsets, size = build_header(layout, {"format": "pt", **(metadata or {})})
                file = OutputFile(folder / filename, size, self._behind)
                self._files.append(file)
                file.pwrite(memoryview(header), 0)
                for n in names:
                    dtype, shape = by_name[n]
                    nbytes = _nbytes(dtype, shape)
                    self._where[n] = (file, offsets[n], nbytes)
                    self._left[n] = nbytes  # bytes not written yet
        except BaseException:
            self.close()
            raise
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            (folder / SAFETENSORS_INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        self.files = list(split.filename_to_tensors)

    def write(self, name: str, tensor: torch.Tensor, start: int = 0) -> None:
        """Write `tensor` as tensor `name`, or, given `start`, as its flat elements from `start` on."""
        file, offset, nbytes = self._where[name]
        data = tensor.detach().contiguous()
        if data.device.type != "cpu":
            data = data.cpu()
        view = memoryview(data.reshape(-1).view(torch.uint8).numpy())  # flat first: 0-d tensors and size-1 dims with odd strides have no byte view
        first = start * data.element_size()
        if first + len(view) > nbytes:
            raise TensorError(f"output {name}: {len(view)} bytes at byte {first}, layout expects {nbytes}")
        file.pwrite(view, offset + first)
        self._left[name] -= len(view)
        self.bytes_written += len(view)

    def close(self) -> None:
        try:
            if self._behind is not None:
                self._behind.close()
        finally:
            for file in self._files:
                file.close()
            self._files.clear()

    def finish(self) -> None:
        """Wait for the writes in flight, then check that every tensor of the layout was written."""
        if self._behind is not None:
            self._behind.flush()
        pending = sorted(n for n, left in self._left.items() if left)
        if pending:
            raise TensorError(f"output incomplete: {len(pending)} tensor(s) not fully written, e.g. {pending[0]}")


_O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0 where the system has none (macOS, Windows)
_BLOCK = 4096  # O_DIRECT alignment of offsets, lengths and buffers (a multiple of every logical block size in use)
_BOUNCE = 8 << 20
_BUFFERS = 3  # bounce buffers: one being written, the others filled ahead


class WriteBehind:
    """The aligned buffers and the disk thread of direct writes, shared by every file of one
    output (its memory, 3 × 8 MiB + 4 KiB, does not grow with the number of shards): a piece is
    copied into the next free bounce buffer and written from it on the disk thread while the
    caller copies the next. A failed write is raised by a later `submit` or by `flush`."""

    def __init__(self):
        self._maps = [*(mmap.mmap(-1, _BOUNCE) for _ in range(_BUFFERS)), mmap.mmap(-1, _BLOCK)]  # page-aligned
        self._buffers = [memoryview(m) for m in self._maps]
        self.block = self._buffers[-1]  # for blocks written at once, on the caller's thread
        self._in_flight: list[Future | None] = [None] * _BUFFERS
        self._next = 0
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="disk")

    def submit(self, fd: int, data: memoryview, offset: int) -> None:
        """Write aligned `data` (at most one buffer) at `offset` of `fd`, behind."""
        i, self._next = self._next, (self._next + 1) % _BUFFERS
        if self._in_flight[i] is not None:
            self._in_flight[i].result()
        buf = self._buffers[i]
        buf[: len(data)] = data
        self._in_flight[i] = self._disk.submit(_write_all, fd, buf[: len(data)], offset)

    def flush(self) -> None:
        """Wait for the writes in flight; then raise the first failed one's error, if any."""
        pending, self._in_flight = self._in_flight, [None] * _BUFFERS
        errors = [f.exception() for f in pending if f is not None]
        failed = [e for e in errors if e is not None]
        if failed:
            raise failed[0]

    def close(self) -> None:
        """Wait for the writes in flight (their errors were raised by `submit` or `flush`, or are
        moot) and free the buffers."""
        self._disk.shutdown(wait=True)
        self._in_flight = [None] * _BUFFERS
        for buf in self._buffers:
            buf.release()
        for m in self._maps:
            try:
                m.close()
            except BufferError:  # a slice still referenced by a failed write's traceback: unmapped with it
                pass


class OutputFile:
    """One output file of a known size, written piece by piece at any offsets, each byte once.

    Given a `WriteBehind` and where the file system accepts O_DIRECT (Linux; not tmpfs), the
    pieces go to the disk directly, not through the page cache: their aligned part through the
    write-behind buffers, the blocks pieces share (a tensor's first and last bytes, the header)
    assembled in memory and written at once when complete; the last block is written whole and
    the file truncated to its size on close. Why: buffered writes of a 3 GB output ran at
    0.8-0.95 GB/s on the machines measured (the kernel reclaims a page of cache for every page
    written) and the fsync before the output is published then took 1.2 s more; direct writes
    ran at 1.4-1.9 GB/s with nothing left to flush (`dd`, ext4; `bench/frankenmerge_memory.py`).
    Otherwise plain `os.pwrite`."""

    def __init__(self, path: Path, size: int, behind: WriteBehind | None = None):
        self.size = size
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self._partial: dict[int, list] = {}  # block index -> [block bytes, bytes still missing]
        self._behind = None
        self.fd = self._open_direct(path, flags, behind) if behind is not None else None
        if self.fd is None:
            self.fd = os.open(path, flags, 0o644)
        os.ftruncate(self.fd, size)

    def _open_direct(self, path: Path, flags: int, behind: WriteBehind) -> int | None:
        """An O_DIRECT descriptor that took one aligned write, or None."""
        if not _O_DIRECT:
            return None
        try:
            fd = os.open(path, flags | _O_DIRECT, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return None
        try:
            behind.block[:] = bytes(_BLOCK)
            os.pwrite(fd, behind.block, 0)  # zeros; the header overwrites them
        except OSError as exc:
            os.close(fd)
            if exc.errno != errno.EINVAL:
                raise
            return None
        self._behind = behind
        return fd

    @property
    def direct(self) -> bool:
        return self._behind is not None

    def pwrite(self, data: memoryview, offset: int) -> None:
        """Write the bytes `data` at `offset` (directly: copied, written behind)."""
        if not self.direct:
            _write_all(self.fd, data, offset)
            return
        end = offset + len(data)
        lo, hi = -(-offset // _BLOCK) * _BLOCK, end // _BLOCK * _BLOCK  # the whole blocks inside [offset, end)
        if lo >= hi:
            self._assemble(data, offset)
            return
        self._assemble(data[: lo - offset], offset)
        self._assemble(data[hi - offset :], hi)
        for pos in range(lo, hi, _BOUNCE):
            self._behind.submit(self.fd, data[pos - offset : min(hi, pos + _BOUNCE) - offset], pos)

    def _assemble(self, data: memoryview, offset: int) -> None:
        """Add bytes of partly written blocks; write each block once all its bytes are there."""
        while len(data):
            b, start = divmod(offset, _BLOCK)
            n = min(len(data), _BLOCK - start)
            entry = self._partial.get(b)
            if entry is None:
                entry = self._partial[b] = [bytearray(_BLOCK), min(_BLOCK, self.size - b * _BLOCK)]
            entry[0][start : start + n] = data[:n]
            entry[1] -= n
            if entry[1] == 0:  # at once, from the block buffer: no wait for a bounce buffer
                del self._partial[b]
                self._behind.block[:] = entry[0]
                _write_all(self.fd, self._behind.block, b * _BLOCK)
            data, offset = data[n:], offset + n

    def close(self) -> None:
        """Close the file (the caller flushes the `WriteBehind` first, for the writes in flight)."""
        if self.fd is None:
            return
        try:
            if self.direct:
                os.ftruncate(self.fd, self.size)  # the last block was written whole
        finally:
            os.close(self.fd)
            self.fd = None


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


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
