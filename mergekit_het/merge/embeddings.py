"""Token-indexed tensors (embeddings, lm_head) brought to one vocabulary before the merge.

A tensor is token-indexed (axis 0 one row per token) when its name is one of `VOCAB_TENSORS`
or ends with `.` + one of them. With a tokenizer configuration (`tokenizer.py`) every model's
rows are permuted to the output vocabulary, mergekit 0.1.5's rule (`PermutedVocabulary`):

    row_m[i] = m's own row perm_m[i]      if perm_m[i] >= 0 and token i is not forced
             = default[i]                 otherwise (the configured or automatic source row)
    row_m[V..V_pad) = mean(row_m[0..V))   padding up to pad_to_multiple_of

in the promotion of the inputs' dtypes (after `dtype:`); the method then merges the aligned rows
like any tensor. Without one, token-indexed tensors whose row counts differ are an error naming
the tensor, or, with `MergeOptions.unsafe_truncate_embeddings`, every model's first min-V rows.
A model that ties its lm_head to its embeddings (no `lm_head.weight`) reads its embeddings there
when the reference model has an lm_head.
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

import torch
from torch import Tensor

from ..errors import TensorError
from ..io.sources import TensorSource
from .plan import MergeOptions
from .tokenizer import Vocabulary, build_vocabulary, tokenizer_source

VOCAB_TENSORS = (
    "embed_tokens.weight", "lm_head.weight", "word_embeddings.weight", "embed_out.weight", "wte.weight",
    "tok_embeddings.weight", "cls.predictions.bias", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
)  # fmt: skip
LM_HEAD, TIED_TO = "lm_head.weight", "model.embed_tokens.weight"


def is_vocab_tensor(name: str) -> bool:
    return any(name == v or name.endswith("." + v) for v in VOCAB_TENSORS)


def aligned_rows(vocab: Vocabulary, name: str, tensors: dict[str, Tensor], base: str | None = None) -> dict[str, Tensor]:
    """Every model's tensor `name` with its rows in the output vocabulary (module docstring); the
    default rows are chosen among these models (`base`: the base model of this tensor's merge)."""
    shapes = {tuple(t.shape[1:]) for t in tensors.values()}
    if len(shapes) > 1:
        raise TensorError(f"{name}: the models' rows differ in shape ({', '.join(map(str, sorted(shapes)))})")
    dtype = next(iter(tensors.values())).dtype
    for t in tensors.values():
        dtype = torch.promote_types(dtype, t.dtype)
    tensors = {ref: t.to(dtype) for ref, t in tensors.items()}
    for ref, t in tensors.items():
        top = max(vocab.perms[ref], default=-1)
        if top >= t.shape[0]:
            raise TensorError(f"{name}: model {ref} has {t.shape[0]} rows but its tokenizer maps a token to row {top}")
    rows = {i: _default_row(d, vocab, tensors, i) for i, d in vocab.defaults(tuple(tensors), base if base in tensors else None).items()}
    forced = list(vocab.forced)
    out = {}
    for ref, t in tensors.items():
        perm = torch.tensor(vocab.perms[ref], dtype=torch.long)
        own = perm >= 0
        own[forced] = False
        new = t.new_zeros((vocab.size, *t.shape[1:]))
        new[: vocab.tokens][own] = t[perm[own]]
        for i, row in rows.items():
            if not own[i]:
                new[i] = row
        if vocab.size > vocab.tokens:
            new[vocab.tokens :] = new[: vocab.tokens].mean(dim=0)
        out[ref] = new
    return out


def _default_row(default: tuple, vocab: Vocabulary, tensors: dict[str, Tensor], i: int) -> Tensor:
    """The row a model lacking token `i` gets: a model's own row, a given row, zero, or the
    mean of the present models' rows (summed in model order, then divided, as mergekit does)."""
    kind = default[0]
    if kind == "own":
        return tensors[default[1]][vocab.perms[default[1]][i]]
    if kind == "row":
        t = tensors[default[1]]
        if default[2] >= t.shape[0]:
            raise TensorError(f"token id {default[2]} is beyond the {t.shape[0]} rows of {default[1]}")
        return t[default[2]]
    first = next(iter(tensors.values()))
    acc = first.new_zeros(first.shape[1:])
    if kind == "zero":
        return acc
    for ref in default[1]:
        acc = acc + tensors[ref][vocab.perms[ref][i]]
    return acc / len(default[1])


def _unchanged(vocab: Vocabulary, metas: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> bool:
    """Every model already holds the output vocabulary's rows in its order, in one dtype, no
    token forced and no padding: alignment would copy the tensors unchanged."""
    identity = list(range(vocab.size))
    return (vocab.size == vocab.tokens and not vocab.forced and len({d for _, d in metas.values()}) == 1
            and all(shape[0] == vocab.size and vocab.perms[r] == identity for r, (shape, _) in metas.items()))  # fmt: skip


class _Group:
    """The aligned (or truncated) token-indexed tensors of every model, one tensor name at a time."""

    def __init__(self, sources: dict[str, TensorSource], vocab: Vocabulary | None, cast: torch.dtype | None,
                 members: dict[str, tuple[tuple[str, ...], str | None]] | None = None):  # fmt: skip
        self.sources, self.vocab, self.cast, self.rows = sources, vocab, cast, {}
        self.members = members or {}  # per tensor: the models it is merged from and their base (default: all)
        self._last: tuple[str, dict[str, Tensor]] | None = None
        self._served: set[str] = set()  # models that have read all of the last aligned tensor
        self._lock = threading.Lock()

    def source_name(self, ref: str, name: str) -> str:
        """The tensor a model reads for `name` (its embeddings for a tied lm_head)."""
        have = self.sources[ref].names()
        return TIED_TO if name == LM_HEAD and name not in have and TIED_TO in have else name

    def read(self, ref: str, name: str, done: bool = True) -> Tensor:
        """Model `ref`'s tensor `name`; `done`: its last piece is being read. The aligned group
        is freed once every model has read all of it (read again, it is recomputed)."""
        if self.vocab is None:  # truncation (or a tied lm_head): the first rows of the model's own tensor
            return self.sources[ref].read(self.source_name(ref, name))[: self.rows.get(name)]
        with self._lock:
            if self._last is None or self._last[0] != name or ref not in self._last[1]:
                self._last = None  # the previous group is freed before the next is read
                refs, base = self.members.get(name, (tuple(self.sources), self.vocab.base))
                inputs = {}
                for r in refs + (() if ref in refs else (ref,)):
                    t = self.sources[r].read(self.source_name(r, name))
                    inputs[r] = t.to(self.cast) if self.cast is not None and t.is_floating_point() else t
                self._last, self._served = (name, aligned_rows(self.vocab, name, inputs, base)), set()
            t = self._last[1][ref]
            self._served |= {ref} if done else set()
            if self._served >= set(self._last[1]):
                self._last = None
            return t


class AlignedSource:
    """A model whose token-indexed tensors come out of a `_Group`; every other tensor as is."""

    def __init__(self, inner: TensorSource, ref: str, group: _Group, shapes: dict[str, tuple[tuple[int, ...], torch.dtype | None]]):
        self.label, self._inner, self._ref, self._group, self._shapes = inner.label, inner, ref, group, shapes

    def names(self) -> list[str]:
        names = self._inner.names()
        tied = LM_HEAD in self._shapes and LM_HEAD not in names and TIED_TO in names
        return names + [LM_HEAD] if tied else names

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Aligned rows in the promoted dtype; truncated or tied ones in the model's own dtype."""
        if name not in self._shapes:
            return self._inner.meta(name)
        shape, dtype = self._shapes[name]
        return shape, dtype or self._inner.meta(self._group.source_name(self._ref, name))[1]

    def read(self, name: str, pin_memory: bool = False) -> Tensor:
        if name not in self._shapes:
            return self._inner.read(name, pin_memory)
        t = self._group.read(self._ref, name)
        return t.pin_memory() if pin_memory else t

    def read_range(self, name: str, start: int, stop: int, pin_memory: bool = False) -> Tensor:
        if name not in self._shapes or self._group.vocab is None:  # truncated rows are a flat prefix
            return self._inner.read_range(self._group.source_name(self._ref, name), start, stop, pin_memory)
        shape = self._shapes[name][0]
        t = self._group.read(self._ref, name, done=stop >= math.prod(shape)).reshape(-1)[start:stop]
        return t.pin_memory() if pin_memory else t

    def close(self) -> None:
        self._inner.close()


def align_sources(sources: dict[str, TensorSource], reference: str, vocab: Vocabulary | None, truncate: bool,
                  cast: torch.dtype | None, members: dict[str, tuple[tuple[str, ...], str | None]] | None = None) -> tuple[_Group, dict[str, tuple[tuple[int, ...], torch.dtype | None]]] | None:  # fmt: skip
    """The group that reads the token-indexed tensors of `sources` (by reference) aligned to
    `vocab`, or checked for equal row counts (truncated to the fewest with `truncate`), and
    their output shapes; None when nothing needs aligning."""
    names = [n for n in sources[reference].names() if is_vocab_tensor(n)]
    group = _Group(sources, vocab, cast, members)
    metas = {n: {r: src.meta(group.source_name(r, n)) for r, src in sources.items() if group.source_name(r, n) in src.names()}
             for n in names}  # fmt: skip
    tied = any(LM_HEAD in names and LM_HEAD not in src.names() for src in sources.values())
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype | None]] = {}
    for name, by_ref in metas.items():
        (shape, dtype), counts = by_ref[reference], {r: s[0][0] for r, s in by_ref.items() if s[0]}
        if vocab is not None and _unchanged(vocab, by_ref):
            continue  # read (and chunked) as is
        if vocab is not None:
            for _, d in by_ref.values():
                dtype = torch.promote_types(dtype, d)
            shapes[name] = ((vocab.size, *shape[1:]), cast if cast is not None and dtype.is_floating_point else dtype)
        elif len(set(counts.values())) > 1:
            listing = ", ".join(f"{r}: {c}" for r, c in counts.items())
            if not truncate:
                raise TensorError(f"{name}: the models' vocabulary sizes differ ({listing} rows); set tokenizer_source "
                                  "(e.g. union) to align them, or pass --unsafe-truncate-embeddings to keep the first rows")  # fmt: skip
            group.rows[name] = min(counts.values())
            warnings.warn(f"{name}: UNSAFE vocabulary truncation to the first {group.rows[name]} rows ({listing})", stacklevel=2)
            shapes[name] = ((group.rows[name], *shape[1:]), None)
        elif tied and name == LM_HEAD:
            shapes[name] = (shape, None)
    return (group, shapes) if shapes else None


def align_by_reference(cfg: Any, sources: dict[str, TensorSource], donor: str, reference: str, options: MergeOptions,
                       cast: torch.dtype | None, members: dict[str, tuple[tuple[str, ...], str | None]] | None = None
                       ) -> tuple[dict[str, TensorSource], Vocabulary | None]:  # fmt: skip
    """`sources` (by model reference) with token-indexed tensors aligned to the configured output
    vocabulary (None without a tokenizer configuration: only the row counts checked, see
    `align_sources`), and that vocabulary; `donor` gives the base tokenizer."""
    vocab = build_vocabulary(cfg, donor, list(sources)) if tokenizer_source(cfg) is not None else None
    aligned = align_sources(sources, reference, vocab, options.unsafe_truncate_embeddings, cast, members)
    if aligned is None:
        return sources, vocab
    return {ref: AlignedSource(src, ref, *aligned) for ref, src in sources.items()}, vocab


def align_vocabularies(cfg: Any, base_ref: str | None, base: TensorSource | None, models: list[TensorSource],
                       options: MergeOptions, cast: torch.dtype | None) -> tuple[TensorSource | None, list[TensorSource], Vocabulary | None]:  # fmt: skip
    """`align_by_reference` for a `models:` merge: `(base, models, vocabulary)`."""
    refs = ([base_ref] if base is not None else []) + [e.model for e in cfg.inputs()]
    by_ref: dict[str, TensorSource] = {}
    for ref, src in zip(refs, ([base] if base is not None else []) + models):
        by_ref.setdefault(ref, src)  # a model listed twice is read through its first source
    aligned, vocab = align_by_reference(cfg, by_ref, cfg.base_model or refs[0], refs[0], options, cast)
    if aligned is by_ref:
        return base, models, vocab
    wrapped = [aligned[ref] for ref in refs]
    return (wrapped[0], wrapped[1:], vocab) if base is not None else (None, wrapped, vocab)


def align_slice_models(cfg: Any, models: dict[str, Any], donor: str, options: MergeOptions, cast: torch.dtype | None) -> Vocabulary | None:
    """`align_by_reference` for a `slices:` merge: each opened model's `source` replaced by its
    aligned view. As in mergekit, embeddings are merged from the first slice's models (its base),
    lm_head from the last slice's, so each is aligned among those models only. Without a
    tokenizer configuration the row counts are left to the plan's shape check (per tensor)."""
    if tokenizer_source(cfg) is None and not options.unsafe_truncate_embeddings:
        return None
    first = models[cfg.slices[0].sources[0].model]
    ends = {"pre": 0, "post": len(cfg.slices) - 1}
    members = {name: (tuple(dict.fromkeys(s.model for s in cfg.slices[ends[r.kind]].sources)), cfg.slice_base(ends[r.kind]))
               for name, r in first.roles.items() if r.kind in ends and is_vocab_tensor(name)}  # fmt: skip
    sources = {ref: m.source for ref, m in models.items()}
    reference = cfg.slices[0].sources[0].model
    aligned, vocab = align_by_reference(cfg, sources, donor, reference, options, cast, members)
    for ref, m in models.items():
        m.source = aligned[ref]
    return vocab
