"""Registry of merge methods: each is a pure function over tensors, registered by name.

A method's signature is its parameter schema:

```python
@merge_method("ties", paper="arXiv:2306.01708", chunked=ties_chunked)
def ties(base: Tensor, tensors: list[Tensor], *, weight: PerModel, density: Density = 1.0,
         normalize: bool = True, lambda_: float = 1.0, stats: TensorStats = WHOLE) -> Tensor: ...
```

- `base` is the base model's tensor (None for methods that take no base);
- `tensors` are the other models' tensors, in config order, on the compute device: a
  `Float32Copies` sequence whose every access returns a new float32 tensor the method owns (it
  may overwrite it); for a method with a `chunked` form, `base` and `tensors` may be matching
  flat slices of the flattened tensors;
- keyword parameters annotated `PerModel` are *tensor parameters* in mergekit's sense: one
  value per model (the function receives a list); every other keyword is a *global* parameter;
  a `Bounds` in the annotation is the parameter's range (checked by `merge.binder`);
- a trailing `_` is stripped from a parameter's YAML name (`lambda_` is `lambda`);
- two keywords are not parameters: `generator` receives a `torch.Generator` seeded per tensor
  (random methods), `stats` the engine's statistics of the tensor (`TensorStats`: the chunk's
  offset, whole-tensor trims of a chunked merge, model-wide statistics of the method's `passes`).

Variants are presets: small named functions with their own signature (their own defaults) that
compose shared steps (`task_arithmetic.py`: sparsify → consensus → disjoint merge).
"""

from __future__ import annotations

import difflib
import inspect
import math
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Callable, Literal

import torch
from torch import Tensor

from ..errors import ConfigError

_PER_MODEL = "per_model"
PerModel = Annotated[float, _PER_MODEL]
"""Annotation of a per-model (tensor) parameter; the function receives `list[float]`."""

REQUIRED = inspect.Parameter.empty
NOT_PARAMETERS = ("generator", "stats")


@dataclass(frozen=True)
class Bounds:
    """The range of a numeric parameter. NaN and ±Inf are always refused. A value below `low`
    (at it too if `low_open`) or above `high` has no meaning and is refused (`why` says so); a
    value outside [`warn_low`, `warn_high`] is one mergekit 0.1.5 accepts (a no-op, an
    extrapolation): it is accepted with a warning (`warn_why`)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    why: str = ""
    warn_low: float = -math.inf
    warn_high: float = math.inf
    warn_why: str = ""

    def refuses(self, v: float) -> bool:
        return v < self.low or (self.low_open and v == self.low) or v > self.high

    def warns(self, v: float) -> bool:
        return v < self.warn_low or v > self.warn_high


Density = Annotated[PerModel, Bounds(low=0, low_open=True, why="a density of 0 or less keeps no entry",
                                     warn_high=1, warn_why="a density above 1 keeps every entry, as 1 does")]  # fmt: skip
"""Per-model fraction of a task vector's entries kept by a sparsifier."""

Share = Annotated[PerModel, Bounds(warn_low=0, warn_high=1, warn_why="it is a share of the entries, outside [0, 1]")]
"""Per-model share of entries (Breadcrumbs' gamma, DELLA's epsilon)."""


class Float32Copies(Sequence[Tensor]):
    """The models' tensors, kept as given (e.g. in their stored bf16) and handed out as new
    float32 tensors one access at a time: a method that walks them holds one float32 copy at a
    time, and may compute in place on it (no fresh buffer per op)."""

    def __init__(self, tensors: Sequence[Tensor], dtype: torch.dtype | None = None):
        self._tensors, self._dtype = tensors, dtype  # dtype: hand out copies in it instead (mergekit's arithmetic)

    def __len__(self) -> int:
        return len(self._tensors)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [_float_copy(t, self._dtype) for t in self._tensors[i]]
        return _float_copy(self._tensors[i], self._dtype)

    def stored(self, i: int) -> Tensor:
        """The i-th tensor as given (not a copy: read it, never write it)."""
        return self._tensors[i]

    def copy_dtype(self, i: int) -> torch.dtype:
        """The dtype of the i-th copy, without making it."""
        return compute_dtype(self._tensors[i], self._dtype)


def compute_dtype(t: Tensor, dtype: torch.dtype | None = None) -> torch.dtype:
    """The arithmetic dtype of `t`: float32, or float64 where stored so, or `dtype` if given."""
    return dtype or (t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32)


def as_compute_dtype(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """`t` in its `compute_dtype` (no copy if it already is)."""
    return t.to(compute_dtype(t, dtype))


def _float_copy(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    out = as_compute_dtype(t, dtype)
    return out.clone() if out is t else out


@dataclass(frozen=True)
class TensorStats:
    """Engine statistics of the tensor (or chunk) being merged, for methods that take `stats`.

    `start`: the first flat element of the chunk (0 for a whole tensor); `trims`: per model, the
    whole tensor's `sparsify.Trim` (a chunked TIES merge; None: compute it from the input);
    `model`: model-wide statistics, the outputs of the method's `passes` and, for a method
    with `statistics`, each kind's per-model counts (`io.statistics.model_statistics`, lists);
    `inputs`: for a method with `statistics`, per kind one float32 tensor per model read from
    the model's statistics file beside this tensor (None where that file lacks it); `tensor`:
    whole-tensor statistics a chunked form's `prepare` computed (its own keys, e.g. `gram`)."""

    start: int = 0
    trims: tuple[Any, ...] | None = None
    tensor: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, tuple[Tensor | None, ...]] = field(default_factory=dict)


WHOLE = TensorStats()
"""The statistics of a whole tensor merged on its own (no chunks, no passes)."""


@dataclass(frozen=True)
class ModelPass:
    """A streaming pass over all tensor names before the merge, computing model statistics.

    `start(n_models)` makes a state; `update(state, base, tensors, params, model)` sees each
    tensor name's float32 inputs, its bound keywords and the statistics of earlier passes
    (`model`); `finish(state)` returns statistics added to `TensorStats.model`."""

    start: Callable[[int], Any]
    update: Callable[[Any, Tensor | None, list[Tensor], dict[str, Any], Mapping[str, Any]], None]
    finish: Callable[[Any], dict[str, Any]]


Chunks = Callable[[], Iterator[tuple[int, Tensor | None, list[Tensor]]]]
"""`chunks()` yields, in flat order, (offset, base chunk, [model chunks]) of one tensor name:
contiguous slices of the flattened tensors in their stored dtype, on the compute device."""

Prepare = Callable[[Chunks], TensorStats]
"""`prepare(chunks)` may iterate `chunks()` (each call is a new pass over the tensor) and returns
the whole-tensor statistics under which the method, called on the chunk [start, stop) of every
input with `stats.start = start`, gives that slice of the whole-tensor result."""

ChunkedForm = Callable[[int, dict[str, Any]], Prepare | None]
"""`form(numel, kwargs)` returns None where `kwargs` make the method need whole tensors, else a
`Prepare`. Deciding needs no data."""


def elementwise(numel: int, kwargs: dict[str, Any]) -> Prepare:
    """The `ChunkedForm` of an elementwise method: no statistics."""
    return _no_statistics


def _no_statistics(chunks: Chunks) -> TensorStats:
    return WHOLE


def reads_chunks(prepare: Prepare) -> bool:
    """Whether `prepare` makes passes over the chunks before the merge pass (so the engine keeps
    them for the next pass where they fit; one pass needs no copy kept)."""
    return prepare is not _no_statistics


@dataclass(frozen=True)
class Param:
    """One parameter of a method's schema, read from its signature."""

    name: str  # YAML name
    kwarg: str  # Python keyword
    default: Any  # REQUIRED if none
    annotation: Any
    per_model: bool
    bounds: Bounds | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def kind(self) -> Any:
        """The annotation without its metadata: float, bool, a Literal, ..."""
        hint = self.annotation
        return typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: the function and its parameter schema."""

    name: str
    fn: Callable[..., Tensor]
    base: Literal["required", "optional", "none"]
    paper: str
    params: dict[str, Param]
    min_models: int = 1
    max_models: int | None = None
    doc: str = ""
    passes: tuple[ModelPass, ...] = ()
    chunked: ChunkedForm | None = None
    statistics: tuple[str, ...] = ()  # kinds of per-model statistics read with each tensor (`gram`, `fisher`)
    # the global parameter s with merge(s) = θ₀ + s·(merge(1) − θ₀) for every tensor (λ, α):
    # a sweep merges once per setting of the others and scales (evaluate/sweep.py)
    scale: str | None = None

    @property
    def per_model_params(self) -> dict[str, Param]:
        return {k: p for k, p in self.params.items() if p.per_model}

    @property
    def global_params(self) -> dict[str, Param]:
        return {k: p for k, p in self.params.items() if not p.per_model}

    @cached_property  # read once per tensor: inspect.signature is not free
    def takes(self) -> frozenset[str]:
        """Which of `NOT_PARAMETERS` the function takes."""
        return frozenset(inspect.signature(self.fn).parameters) & frozenset(NOT_PARAMETERS)

    def __call__(self, base: Tensor | None, tensors: list[Tensor], generator: torch.Generator | None = None,
                 stats: TensorStats = WHOLE, **params) -> Tensor:  # fmt: skip
        """Apply to one tensor name: per-model params as lists (one per tensor), globals as scalars,
        keyed by YAML name (`lambda`) or Python keyword (`lambda_`)."""
        kwargs = {self.params[k].kwarg if k in self.params else k: v for k, v in params.items()}
        kwargs.update(self.context(generator, stats))
        if not isinstance(tensors, Float32Copies):
            tensors = Float32Copies(tensors)
        return self.fn(base, tensors, **kwargs)

    def context(self, generator: torch.Generator | None, stats: TensorStats) -> dict[str, Any]:
        """The non-parameter keywords the function takes."""
        return {k: v for k, v in (("generator", generator), ("stats", stats)) if k in self.takes}

    def apply(self, base: Tensor | None, tensors: list[Tensor], generator: torch.Generator | None = None,
              stats: TensorStats = WHOLE, **params) -> Tensor:  # fmt: skip
        """Like calling the method, with defaults filled in and scalar per-model values broadcast."""
        full = {k: p.default for k, p in self.params.items() if not p.required}
        full.update({self._yaml_name(k): v for k, v in params.items()})
        for k in self.per_model_params:
            if k in full and not isinstance(full[k], (list, tuple)):
                full[k] = [full[k]] * len(tensors)
        return self(base, tensors, generator=generator, stats=stats, **full)

    def _yaml_name(self, key: str) -> str:
        return key.rstrip("_") if key.rstrip("_") in self.params else key


METHODS: dict[str, MergeMethod] = {}


def _schema(fn: Callable) -> dict[str, Param]:
    hints = typing.get_type_hints(fn, include_extras=True)
    params: dict[str, Param] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in NOT_PARAMETERS:
            continue
        hint = hints.get(p.name)
        meta = getattr(hint, "__metadata__", ())
        bounds = next((m for m in meta if isinstance(m, Bounds)), None)
        name = p.name.rstrip("_")
        params[name] = Param(name, p.name, p.default, hint, _PER_MODEL in meta, bounds)
    return params


def merge_method(
    name: str,
    *,
    paper: str = "",
    base: Literal["required", "optional", "none"] = "required",
    min_models: int = 1,
    max_models: int | None = None,
    passes: tuple[ModelPass, ...] = (),
    chunked: ChunkedForm | None = None,
    statistics: tuple[str, ...] = (),
    scale: str | None = None,
):
    """Register `fn` under `name`, its signature its schema; `passes` compute model statistics
    before the merge (see `ModelPass`), `chunked` lets the engine run it chunk by chunk (see
    `ChunkedForm`), `statistics` names the per-model statistics (`io/statistics.py` kinds) the
    engine reads beside each tensor into `TensorStats.inputs`; `scale` names the global
    parameter that scales the merged task vector linearly (see `MergeMethod.scale`)."""

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if scale is not None and scale not in _schema(fn):
            raise ValueError(f"merge method '{name}': its scale parameter '{scale}' is not in its signature")
        if name in METHODS:
            raise ValueError(f"merge method '{name}' is registered twice")
        METHODS[name] = MergeMethod(
            name=name, fn=fn, base=base, paper=paper, params=_schema(fn), min_models=min_models,
            max_models=max_models, doc=inspect.getdoc(fn) or "", passes=passes, chunked=chunked,
            statistics=statistics, scale=scale,
        )  # fmt: skip
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
