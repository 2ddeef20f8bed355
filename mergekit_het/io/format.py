"""The safetensors file layout, read and written with positional I/O.

A file is: 8-byte little-endian header length N, N bytes of JSON header
({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}), then the data.
We parse the header ourselves so that tensors are read with `os.preadv` into fresh
buffers instead of through a memory map: mapped pages count towards the process's
resident memory until the file is closed, and the engine keeps memory bounded by a few tensors.

The header is checked at least as strictly as the safetensors library checks it (its
`Metadata::validate`): a JSON object of at most 100 MB, `__metadata__` a str→str map, every
tensor of a known dtype with a shape of non-negative ints and two non-negative data offsets;
sorted by offset the ranges must start at 0, follow each other without gap or overlap, each
hold exactly numel × itemsize bytes, and end where the file ends. We also refuse duplicate
JSON keys (the library keeps the last one). Nothing in a hostile header can make us read
bytes outside the tensor's own range.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import MergekitHetError, TensorError, excerpt

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
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit (MAX_HEADER_SIZE)
MAX_INDEX_BYTES = 100_000_000  # a shard index: ~10 MB for the largest public MoE checkpoints
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
    """Parse and validate a safetensors file's header; a one-line error naming the file (and
    tensor) if it is corrupt, truncated or inconsistent with the file's size."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(8)
        if len(raw) < 8:
            raise TensorError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES:
            raise TensorError(f"{path}: not safetensors (header of {n} bytes, the limit is {MAX_HEADER_BYTES})")
        if n > size - 8:
            raise TensorError(f"{path}: truncated or not safetensors (header of {n} bytes, file of {size})")
        blob = f.read(n)
    entries, metadata = parse_header(blob, size - 8 - n, str(path))
    start = 8 + n
    tensors = {name: TensorMeta(path, start + b, start + e, dt, shape) for name, (dt, shape, b, e) in entries.items()}
    return tensors, metadata


Entry = tuple[torch.dtype, tuple[int, ...], int, int]  # dtype, shape, begin, end (relative to the data)


def parse_header(blob: bytes, data_len: int, where: str) -> tuple[dict[str, Entry], dict[str, str]]:
    """Validate header bytes `blob` for a data section of `data_len` bytes (see the module
    docstring for the rules); every failure is a `TensorError` naming `where` and the tensor."""
    header = load_json(blob, where, "safetensors header")
    if not isinstance(header, dict):
        raise TensorError(f"{where}: safetensors header is a JSON {_kind(header)}, not an object")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata  # null is allowed, as by the library
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise TensorError(f"{where}: __metadata__ must map strings to strings (got {excerpt(metadata)})")
    entries = {name: _entry(info, where, f"tensor {excerpt(name, 80)}", data_len) for name, info in header.items()}
    pos = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a gap (bytes {pos}..{begin} belong to no tensor)"
            raise TensorError(f"{where}: tensor {excerpt(name, 80)} at data offset {begin} {what}")
        pos = end
    if pos != data_len:
        raise TensorError(f"{where}: truncated shard or trailing bytes: tensors cover {pos} data bytes, the file holds {data_len}")
    return entries, metadata


def _entry(info: Any, where: str, tensor: str, data_len: int) -> Entry:
    """One tensor's (dtype, shape, begin, end), checked against itself and the data size."""
    what = f"{where}: {tensor}"
    if not isinstance(info, dict):
        raise TensorError(f"{what}: entry is a JSON {_kind(info)}, not an object")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
    if missing:
        raise TensorError(f"{what}: entry has no {missing[0]}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise TensorError(f"{what} has unsupported dtype {excerpt(dtype)}; supported: {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise TensorError(f"{what}: shape must be a list of non-negative integers (got {excerpt(shape)})")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise TensorError(f"{what}: data_offsets must be two non-negative integers (got {excerpt(offsets)})")
    begin, end = offsets
    if end > data_len:
        raise TensorError(f"{where}: truncated shard: {tensor} needs bytes up to {end} of the data section, the file holds {data_len}")
    if begin > end:
        raise TensorError(f"{what}: data_offsets [{begin}, {end}] end before they begin")
    nbytes = _numel_capped(shape, data_len) * DTYPES[dtype].itemsize
    if nbytes != end - begin:
        raise TensorError(
            f"{what}: shape {excerpt(shape)} of {dtype} needs {nbytes} bytes, data_offsets give {end - begin}"
        )
    return DTYPES[dtype], tuple(shape), begin, end


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _numel_capped(shape: list[int], cap: int) -> int:
    """∏ shape, or cap + 1 as soon as the product passes `cap` (no huge-integer products)."""
    if 0 in shape:
        return 0
    n = 1
    for s in shape:
        n *= s
        if n > cap:
            return cap + 1
    return n


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


def load_json(blob: bytes, where: str, what: str, error: type[MergekitHetError] = TensorError) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, no absurd nesting or numbers;
    every failure an `error` naming `where`."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            seen: set[str] = set()
            dup = next(k for k, _ in items if k in seen or seen.add(k))
            raise error(f"{where}: {what} names {excerpt(dup, 80)} twice")
        return out

    def constant(name: str) -> None:
        raise error(f"{where}: {what} holds {name}, which is not JSON")

    try:
        return json.loads(blob.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except UnicodeDecodeError as exc:
        raise error(f"{where}: {what} is not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise error(f"{where}: {what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of thousands of digits
        raise error(f"{where}: corrupt {what} (not valid JSON: {str(exc).splitlines()[0][:80]})") from None


def read_index(path: Path) -> dict[str, str]:
    """The `weight_map` of a shard index (`model.safetensors.index.json`, `pytorch_model.bin.index.json`):
    a non-empty str→str map; a one-line error naming the file and key otherwise."""
    with open(path, "rb") as f:
        blob = f.read(MAX_INDEX_BYTES + 1)
    if len(blob) > MAX_INDEX_BYTES:
        raise TensorError(f"{path}: index larger than {MAX_INDEX_BYTES} bytes")
    index = load_json(blob, str(path), "index")
    if not isinstance(index, dict):
        raise TensorError(f"{path}: index is a JSON {_kind(index)}, not an object")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise TensorError(f"{path}: not a valid shard index (no 'weight_map' object)")
    if not weight_map:
        raise TensorError(f"{path}: 'weight_map' is empty (the index names no tensor)")
    for key, value in weight_map.items():
        if not isinstance(value, str) or not value:
            raise TensorError(f"{path}: weight_map[{excerpt(key, 80)}] must be a file name (got {excerpt(value)})")
    return weight_map


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
