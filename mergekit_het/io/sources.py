"""Tensor sources: lazy, tensor-by-tensor access to the weights of one model.

Every source exposes `names()`, `meta(name) -> (shape, dtype)` (from headers, no data read),
`read(name) -> Tensor` (CPU) and `read_range(name, start, stop)`: the flat elements
[start, stop) of a tensor, so the engine can stream a large tensor in chunks. Kinds:
- `SafetensorsModel`: a Hugging Face folder with `model.safetensors`, or sharded with
  `model.safetensors.index.json`, or a single `.safetensors` file;
- `PickleModel`: `pytorch_model.bin` checkpoints, only with an explicit opt-in (pickle can run code);
- `StateDictSource`: tensors already in memory (federated/continual runners, sweeps);
- `DerivedSource`: a model over a base, for LoRA adapters (`lora.py`) and stored task vectors.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Mapping, Protocol

import torch
from torch import Tensor

from ..errors import ConfigError, TensorError
from .format import TensorMeta, read_header, read_range, read_tensor
from .paths import weight_files
from ..runtime.names import PYTORCH_INDEX_FILE, PYTORCH_WEIGHTS_NAME, SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE



class TensorSource(Protocol):
    label: str

    def names(self) -> list[str]: ...

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]: ...

    def read(self, name: str, pin_memory: bool = False) -> Tensor: ...

    def read_range(self, name: str, start: int, stop: int, pin_memory: bool = False) -> Tensor: ...

    def close(self) -> None: ...


class SafetensorsModel:
    """Lazy reader over the safetensors shards of one model (one descriptor per shard)."""

    def __init__(self, path: Path):
        self.label = str(path)
        files = _safetensors_files(path)
        self._metas: dict[str, TensorMeta] = {}
        for file in files:
            tensors, _ = read_header(file)
            for name, meta in tensors.items():
                if name in self._metas:
                    raise TensorError(f"{path}: tensor {name} appears in two shards")
                self._metas[name] = meta
        self._fds = {file: os.open(file, os.O_RDONLY) for file in files}

    def names(self) -> list[str]:
        return list(self._metas)

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        m = self._metas[name]
        return m.shape, m.dtype

    def read(self, name: str, pin_memory: bool = False) -> Tensor:
        meta = self._metas[name]
        return read_tensor(self._fds[meta.file], meta, pin_memory)

    def read_range(self, name: str, start: int, stop: int, pin_memory: bool = False) -> Tensor:
        meta = self._metas[name]
        return read_range(self._fds[meta.file], meta, start, stop, pin_memory)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _safetensors_files(path: Path) -> list[Path]:
    if path.is_file() and path.suffix == ".safetensors":
        return [path]
    files = weight_files(path, SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE)
    if files:
        return files
    raise ConfigError(f"{path}: no {SAFETENSORS_SINGLE_FILE} or {SAFETENSORS_INDEX_FILE}")


class StateDictSource:
    """Tensors already in memory, e.g. a client model in a federated round."""

    def __init__(self, state: Mapping[str, Tensor], label: str = "<in-memory>"):
        self.label = label
        self._state = state

    def names(self) -> list[str]:
        return list(self._state)

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        t = self._state[name]
        return tuple(t.shape), t.dtype

    def read(self, name: str, pin_memory: bool = False) -> Tensor:
        return self._state[name]

    def read_range(self, name: str, start: int, stop: int, pin_memory: bool = False) -> Tensor:
        return self._state[name].reshape(-1)[start:stop]  # a view (a subclass's `read` may copy)

    def close(self) -> None:
        pass


class PickleModel(StateDictSource):
    """`pytorch_model.bin` checkpoints, memory-mapped by `torch.load(mmap=True, weights_only=True)`;
    each read copies the tensor (or the chunk: `read_range` copies only its elements) out of the map."""

    def __init__(self, path: Path):
        files = weight_files(path, PYTORCH_INDEX_FILE, PYTORCH_WEIGHTS_NAME)
        tensors: dict[str, Tensor] = {}
        for file in files:
            try:
                tensors.update(torch.load(file, map_location="cpu", mmap=True, weights_only=True))
            except Exception as exc:  # torch raises many types for corrupt archives
                raise TensorError(f"{file}: cannot be read as a PyTorch checkpoint ({type(exc).__name__})") from None
        super().__init__(tensors, str(path))

    def read(self, name: str, pin_memory: bool = False) -> Tensor:
        t = super().read(name).clone()
        return t.pin_memory() if pin_memory else t

    def read_range(self, name: str, start: int, stop: int, pin_memory: bool = False) -> Tensor:
        t = super().read_range(name, start, stop).clone()
        return t.pin_memory() if pin_memory else t

    def close(self) -> None:
        self._state.clear()


class DerivedSource:
    """A model defined over a base: LoRA adapter (base + B·A·scale), stored task vector (θ₀ + τ).

    `transform(name, base_tensor)` returns the model's tensor, or None where it equals the base.
    Chunks (`read_range`) are cut from the last tensor computed, which is kept until another
    name is read.
    """

    def __init__(self, base: TensorSource, transform: Callable[[str, Tensor], Tensor | None], label: str,
                 owned: tuple[TensorSource, ...] = ()):  # fmt: skip
        self.label = label
        self._base = base
        self._transform = transform
        self._owned = owned  # sources the transform reads from, closed with this one
        self._last: tuple[str, Tensor] | None = None
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return self._base.names()

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self._base.meta(name)

    def read(self, name: str, pin_memory: bool = False) -> Tensor:
        base = self._base.read(name)
        out = self._transform(name, base)
        return base if out is None else out.to(base.dtype)

    def read_range(self, name: str, start: int, stop: int, pin_memory: bool = False) -> Tensor:
        with self._lock:
            if self._last is None or self._last[0] != name:
                self._last = (name, self.read(name).reshape(-1))
            t = self._last[1][start:stop]
        return t.pin_memory() if pin_memory else t

    def close(self) -> None:
        self._last = None
        for src in (self._base, *self._owned):
            src.close()


def has_model_weights(path: Path) -> bool:
    return any((path / f).is_file() for f in (SAFETENSORS_SINGLE_FILE, SAFETENSORS_INDEX_FILE, PYTORCH_WEIGHTS_NAME, PYTORCH_INDEX_FILE))
