"""The NaN/Inf check of merged tensors (`MergeOptions.nan_policy`), naming the model at fault."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..errors import TensorError
from .plan import NanPolicy, TensorPlan


def _is_finite(t: Tensor) -> bool:
    """NaN and ±Inf propagate to min/max: one reduction pass, no temporary tensor."""
    if t.numel() == 0:
        return True
    lo, hi = t.aminmax()
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_finite(merged: Tensor, raw: list[Tensor], tp: TensorPlan, method: str, policy: NanPolicy, seen: list[str]) -> None:
    """Check the merged tensor in its output dtype (NaN/Inf in an input propagates through every
    method's arithmetic, even into trimmed or dropped entries: NaN·0 = NaN; a value beyond the
    output dtype's range, e.g. float16's 65504, becomes Inf there); only if it is not finite are
    the inputs checked, to name the model at fault, or the merge itself (e.g. Σw = 0)."""
    if policy == "ignore" or _is_finite(merged):
        return
    bad = [label for t, label in zip(raw, tp.labels()) if not _is_finite(t.float())]
    if bad:
        msg = f"{tp.name}: model {bad[0]} holds NaN or Inf values"
    else:
        msg = (f"{tp.name}: {method} produced NaN or Inf from finite inputs (weights summing to 0, or values"
               f" beyond the range of {str(merged.dtype).removeprefix('torch.')}?)")
    if policy == "error":
        raise TensorError(msg + " (pass --nan-policy warn to merge anyway)")
    seen.append(msg)
    warnings.warn(msg, stacklevel=2)
