"""Merging in-memory models inside a run: the aggregation settings of the federated and
continual runners and the one call into the merge engine they share.

```yaml
aggregate: {method: ties, parameters: {lambda: 1.0}, model_parameters: {density: 0.2}, weighting: examples}
```
`merge_models(settings, models, base, weights)` is `merge_state_dicts` with per-model
parameters = `model_parameters` plus `weight` = the given weight of each model (FedAvg: the
client's example count, or 1 with `weighting: uniform`). The settings are checked against the
method's schema by the merge package's parameter binder when the config is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from ..errors import ConfigError
from ..merge.binder import bind_parameters
from ..merge.engine import merge_state_dicts
from .yaml_config import StrictModel


class AggregateConfig(StrictModel):
    """A registered merge method applied to the run's models with the run's base model.

    `weighting: examples` gives each model the per-model parameter weight = its example count
    (FedAvg); `uniform` gives weight 1."""

    method: str = "linear"
    parameters: dict[str, Any] = {}
    model_parameters: dict[str, Any] = {}  # per-model values shared by all models (e.g. density)
    weighting: Literal["examples", "uniform"] = "examples"


def check_aggregate(agg: AggregateConfig, where: str) -> None:
    """The method exists and the parameters bind to its schema: known names (did-you-mean),
    global ones not given per model, values in range (ValueError naming `where` if not)."""
    if "weight" in agg.model_parameters:
        raise ValueError(f"{where}.model_parameters.weight is set per model from {where}.weighting")
    try:
        bind_parameters(agg.method, agg.parameters, [agg.model_parameters], where, require=False,
                        model_labels=[f"{where}.model_parameters"])  # fmt: skip
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def merge_models(
    agg: AggregateConfig,
    models: Sequence[Mapping[str, torch.Tensor]],
    base: Mapping[str, torch.Tensor],
    weights: Sequence[float],
    *,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """The engine's merge of `models` against `base` (arithmetic on `device`, result on the CPU)."""
    return merge_state_dicts(
        agg.method, models=list(models), base=base, parameters=agg.parameters,
        model_parameters=[{**agg.model_parameters, "weight": float(w)} for w in weights], seed=seed, device=str(device),
    )  # fmt: skip
