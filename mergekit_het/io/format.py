"""The safetensors file layout, read and written with positional I/O.

A file is: 8-byte little-endian header length N, N bytes of JSON header
({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}), then the data.
We parse the header ourselves so that tensors are read with `os.preadv` into fresh
buffers instead of through a memory map: mapped pages count towards the process's
resident memory until the file is closed, and the engine keeps memory bounded by a few tensors.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TensorError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_ALIGN = 8


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lives: file, byte range, dtype and shape."""

    file: Path
    begin: int  # absolute byte offset in the file
    end: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path) -> tuple[dict[str, TensorMeta], dict[str, str]]:
    """Parse a safetensors file's header; a one-line error if it is corrupt or truncated."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise TensorError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise TensorError(f"{path}: truncated or not safetensors (header of {n} bytes, file of {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TensorError(f"{path}: corrupt safetensors header") from None
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    tensors: dict[str, TensorMeta] = {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise TensorError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        meta = TensorMeta(path, data_start + begin, data_start + end, DTYPES[info["dtype"]], tuple(info["shape"]))
        if meta.end > size:
            raise TensorError(
                f"{path}: truncated shard: tensor {name} needs bytes up to {meta.end}, the file has {size}"
            )
        tensors[name] = meta
    return tensors, metadata


def read_tensor(fd: int, meta: TensorMeta, pin_memory: bool = False) -> torch.Tensor:
    """Read one tensor with positional reads (thread-safe on a shared descriptor)."""
    return read_range(fd, meta, 0, _numel(meta.shape), pin_memory).reshape(meta.shape)


def read_range(fd: int, meta: TensorMeta, start: int, stop: int, pin_memory: bool = False) -> torch.Tensor:
    """Read the flat elements [start, stop) of one tensor (a 1-D tensor) with positional reads."""
    item = meta.dtype.itemsize
    nbytes = (stop - start) * item
    buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin_memory)
    view = memoryview(buf.numpy())
    first = meta.begin + start * item
    done = 0
    while done < nbytes:
        got = os.preadv(fd, [view[done:]], first + done)
        if got == 0:
            raise TensorError(f"{meta.file}: truncated shard (short read at byte {first + done})")
        done += got
    return buf.view(meta.dtype)


def build_header(
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]
) -> tuple[bytes, dict[str, int], int]:
    """Header bytes (length prefix included, padded to 8), each tensor's absolute offset, file size."""
    header: dict[str, object] = {"__metadata__": metadata}
    rel: dict[str, int] = {}
    pos = 0
    for name, dtype, shape in entries:
        nbytes = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        rel[name] = pos
        pos += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % _ALIGN)
    prefix = struct.pack("<Q", len(blob)) + blob
    return prefix, {name: len(prefix) + off for name, off in rel.items()}, len(prefix) + pos


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
