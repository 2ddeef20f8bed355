"""Passthrough: one model's tensor, unchanged or scaled (mergekit 0.1.5 `passthrough`).

Its real use is in `slices:` (layer stacking, frankenmerges), where each output slice takes
its layers from one source."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .registry import Float32Copies, PerModel, elementwise, merge_method


@merge_method("passthrough", paper="https://github.com/arcee-ai/mergekit", base="none", max_models=1,
              chunked=elementwise)
def passthrough(base: None, tensors: Sequence[Tensor], *, scale: PerModel = None) -> Tensor:
    """θ₁, or θ₁·scale where `scale` is set (it may be filtered or a layer gradient). Unscaled,
    the stored tensor itself: its float32 round trip is the identity, so no copy is made."""
    if scale[0] is None:
        return tensors.stored(0) if isinstance(tensors, Float32Copies) else tensors[0]
    return tensors[0] * scale[0]
