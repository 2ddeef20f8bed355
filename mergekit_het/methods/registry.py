"""Registry of merge methods: each is a pure function over tensors, registered by name.

A method's signature is its parameter schema:

```python
@merge_method("ties", paper="arXiv:2306.01708", base="required")
def ties(base: Tensor, tensors: list[Tensor], *, weight: PerModel, density: PerModel = 1.0,
         normalize: bool = True, lambda_: float = 1.0) -> Tensor: ...
```

- `base` is the base model's tensor (None for methods that take no base);
- `tensors` are the other models' tensors, in config order, on the compute device: a
  `Float32Copies` sequence whose every access returns a new float32 tensor the method owns (it
  may overwrite it); for a method with a `chunked` form, `base` and `tensors` may be matching
  flat slices of the flattened tensors;
- keyword parameters annotated `PerModel` are *tensor parameters* in mergekit's sense: one
  value per model (the engine passes a list); every other keyword is a *global* parameter;
- a trailing `_` is stripped from a parameter's YAML name (`lambda_` is `lambda`);
- a parameter named `generator` receives a `torch.Generator` seeded per tensor (random methods);
- keywords listed in `passes` outputs are *model statistics*: the engine computes them with
  streaming passes over every tensor before merging (e.g. the TIES paper's model-wide trim
  threshold) and passes them to every call; they are not user parameters;
- `chunked` says how the engine may run the method on flat slices ("chunks") of a large
  tensor, so memory and cache traffic stay bounded by the chunk size (see `ChunkedForm`);
  keywords it computes (listed in `computed`) are not user parameters either.

Presets register one implementation under several names with some keywords fixed and
other defaults changed (mergekit's registry: ties / dare_ties / breadcrumbs are presets of
generalized task arithmetic).
"""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass, field
from functools import cached_property
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Callable, Literal

import torch
from torch import Tensor

from ..errors import ConfigError

_PER_MODEL = "per_model"
PerModel = Annotated[float, _PER_MODEL]
"""Annotation of a per-model (tensor) parameter; the function receives `list[float]`."""

REQUIRED = inspect.Parameter.empty


class Float32Copies(Sequence[Tensor]):
    """The models' tensors, kept as given (e.g. in their stored bf16) and handed out as new
    float32 tensors one access at a time: a method that walks them holds one float32 copy at a
    time, and may compute in place on it (no fresh buffer per op)."""

    def __init__(self, tensors: Sequence[Tensor]):
        self._tensors = tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [_float_copy(t) for t in self._tensors[i]]
        return _float_copy(self._tensors[i])


def as_compute_dtype(t: Tensor) -> Tensor:
    """`t` in the arithmetic dtype: float32, or float64 where stored so (no copy if it already is)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _float_copy(t: Tensor) -> Tensor:
    out = as_compute_dtype(t)
    return out.clone() if out is t else out


@dataclass(frozen=True)
class ModelPass:
    """A streaming pass over all tensor names before the merge, computing model statistics.

    `start(n_models)` makes a state; `update(state, base, tensors, params)` sees each tensor
    name's float32 inputs and resolved parameters (including outputs of earlier passes);
    `finish(state)` returns keyword values for later passes and for the method (names
    starting with `_` are seen by later passes only).
    """

    start: Callable[[int], Any]
    update: Callable[[Any, Tensor | None, list[Tensor], dict[str, Any]], None]
    finish: Callable[[Any], dict[str, Any]]
    outputs: tuple[str, ...]


Chunks = Callable[[], Iterator[tuple[int, Tensor | None, list[Tensor]]]]
"""`chunks()` yields, in flat order, (offset, base chunk, [model chunks]) of one tensor name:
contiguous slices of the flattened tensors in their stored dtype, on the compute device."""

ChunkExtra = Callable[[int, int], dict[str, Any]]
"""`extra(start, stop)`: keywords under which the method, called on the chunk [start, stop) of
every input, gives that slice of the whole-tensor result."""

ChunkedForm = Callable[[int, dict[str, Any]], Callable[[Chunks], ChunkExtra] | None]
"""`form(numel, kwargs)` returns None where `kwargs` make the method need whole tensors, else
`prepare(chunks)`, which may iterate `chunks()` (each call is a new pass over the tensor) to
compute whole-tensor statistics and returns the `ChunkExtra`. Deciding needs no data."""


def elementwise(numel: int, kwargs: dict[str, Any]) -> Callable[[Chunks], ChunkExtra]:
    """The `ChunkedForm` of an elementwise method: no statistics, no extra keywords."""
    return _no_statistics


def _no_statistics(chunks: Chunks) -> ChunkExtra:
    return _NO_EXTRA


def _NO_EXTRA(start: int, stop: int) -> dict[str, Any]:
    return {}


def reads_chunks(prepare: Callable[[Chunks], ChunkExtra]) -> bool:
    """Whether `prepare` makes passes over the chunks before the merge pass (so the engine keeps
    them for the next pass where they fit; one pass needs no copy kept)."""
    return prepare is not _no_statistics


@dataclass(frozen=True)
class Param:
    name: str  # YAML name
    kwarg: str  # Python keyword
    default: Any  # REQUIRED if none
    annotation: Any
    per_model: bool

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: the function, its parameter schema and its fixed preset keywords."""

    name: str
    fn: Callable[..., Tensor]
    base: Literal["required", "optional", "none"]
    paper: str
    params: dict[str, Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    min_models: int = 1
    max_models: int | None = None
    doc: str = ""
    passes: tuple[ModelPass, ...] = ()
    chunked: ChunkedForm | None = None

    @property
    def per_model_params(self) -> dict[str, Param]:
        return {k: p for k, p in self.params.items() if p.per_model}

    @property
    def global_params(self) -> dict[str, Param]:
        return {k: p for k, p in self.params.items() if not p.per_model}

    @cached_property  # read once per tensor: inspect.signature is not free
    def uses_generator(self) -> bool:
        return "generator" in inspect.signature(self.fn).parameters

    def __call__(self, base: Tensor | None, tensors: list[Tensor], generator=None, **params) -> Tensor:
        """Apply to one tensor name: per-model params as lists (one per tensor), globals as scalars.

        Parameters are keyed by YAML name (`lambda`) or Python keyword (`lambda_`)."""
        kwargs = self.keywords(len(tensors), params)
        if self.uses_generator:
            kwargs["generator"] = generator
        if not isinstance(tensors, Float32Copies):
            tensors = Float32Copies(tensors)
        return self.fn(base, tensors, **kwargs)

    def keywords(self, n_models: int, params: dict[str, Any]) -> dict[str, Any]:
        """The function's keyword arguments for `params` (YAML names or keywords), fixed ones added."""
        kwargs = {self.params[k].kwarg if k in self.params else k: v for k, v in params.items()}
        for kwarg, value in self.fixed.items():
            kwargs[kwarg] = [value] * n_models if kwarg in self.fixed_per_model else value
        return kwargs

    def apply(self, base: Tensor | None, tensors: list[Tensor], generator=None, **params) -> Tensor:
        """Like calling the method, with defaults filled in and scalar per-model values broadcast."""
        full = {k: p.default for k, p in self.params.items() if not p.required}
        full.update({self._yaml_name(k): v for k, v in params.items()})
        for k, p in self.per_model_params.items():
            if k in full and not isinstance(full[k], (list, tuple)):
                full[k] = [full[k]] * len(tensors)
        return self(base, tensors, generator=generator, **full)

    def _yaml_name(self, key: str) -> str:
        return key.rstrip("_") if key.rstrip("_") in self.params else key

    @cached_property  # get_type_hints evaluates every annotation (0.4 ms a call)
    def fixed_per_model(self) -> frozenset[str]:
        hints = typing.get_type_hints(self.fn, include_extras=True)
        return frozenset(k for k in self.fixed if _PER_MODEL in getattr(hints.get(k), "__metadata__", ()))


METHODS: dict[str, MergeMethod] = {}


def _schema(fn: Callable, fixed: dict[str, Any], defaults: dict[str, Any], computed: set[str]) -> dict[str, Param]:
    hints = typing.get_type_hints(fn, include_extras=True)
    params: dict[str, Param] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in fixed or p.name == "generator" or p.name in computed:
            continue
        hint = hints.get(p.name)
        per_model = _PER_MODEL in getattr(hint, "__metadata__", ())
        name = p.name.rstrip("_")
        default = defaults.get(name, p.default)
        params[name] = Param(name, p.name, default, hint, per_model)
    unknown = set(defaults) - set(params)
    if unknown:
        raise TypeError(f"{fn.__name__}: preset defaults for unknown parameters {sorted(unknown)}")
    return params


def merge_method(
    name: str,
    *,
    paper: str = "",
    base: Literal["required", "optional", "none"] = "required",
    fixed: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    min_models: int = 1,
    max_models: int | None = None,
    passes: tuple[ModelPass, ...] = (),
    chunked: ChunkedForm | None = None,
    computed: tuple[str, ...] = (),
):
    """Register `fn` under `name`; `fixed` keywords are not user-settable, `defaults` override,
    `passes` compute model statistics before the merge (see `ModelPass`), `chunked` lets the
    engine run it chunk by chunk, computing the keywords `computed` (see `ChunkedForm`)."""
    fixed = fixed or {}
    computed = {out for p in passes for out in p.outputs} | set(computed)

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in METHODS:
            raise ValueError(f"merge method '{name}' is registered twice")
        METHODS[name] = MergeMethod(
            name=name,
            fn=fn,
            base=base,
            paper=paper,
            params=_schema(fn, fixed, defaults or {}, computed),
            fixed=fixed,
            min_models=min_models,
            max_models=max_models,
            doc=inspect.getdoc(fn) or "",
            passes=passes,
            chunked=chunked,
        )
        return fn

    return register


def get_method(name: str) -> MergeMethod:
    """The method registered as `name`, or a one-line error with the closest names."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"merge_method '{name}' is unknown; choose one of {', '.join(sorted(METHODS))}{hint}"
        )
    return METHODS[name]
