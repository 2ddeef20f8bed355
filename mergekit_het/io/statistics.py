"""Per-expert merge statistics on disk: `EXPERT/merge_stats.safetensors`.

The file holds raw sums, so statistics of several shards or clients add exactly (`add`):
- `<weight name>.gram`: Σ x xᵀ over every input row x of the nn.Linear owning that weight
  (in × in), with `<weight name>.gram_rows` (int64 scalar) the number of rows summed (a pooler
  sees one row per example, the other layers one per token);
- `<weight name>.fisher`: Σ over examples of each example's diagonal Fisher (the weight's shape),
  with `fisher_examples` the number of examples.
Merge methods use the means (sum / count), as RegMean's and Fisher merging's official code do.
Names are the expert's own tensor names, so the merge engine reads `<name>.<kind>` beside each
tensor `<name>` it merges.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import ConfigError
from .sources import SafetensorsModel, StateDictSource, TensorSource

STATS_FILE = "merge_stats.safetensors"
COUNTS = {"fisher": "fisher_examples"}  # model-wide counts (a Gram's rows are counted per weight)


def stats_key(name: str, kind: str) -> str:
    """The statistics tensor of kind `kind` for the weight `name`."""
    return f"{name}.{kind}"


def stats_path(expert: str | Path) -> Path:
    """`expert/merge_stats.safetensors` (or `expert` itself if it is the file)."""
    path = Path(expert)
    return path if path.suffix == ".safetensors" else path / STATS_FILE


def save(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write the statistics atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def add(parts: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The statistics of the pooled data from those of disjoint parts: the sums and counts added.
    Every part must hold the same tensors."""
    names = set(parts[0])
    for i, p in enumerate(parts[1:], 1):
        if set(p) != names:
            raise ConfigError(f"statistics part {i} holds other tensors than part 0 ({sorted(set(p) ^ names)[:3]} ...)")
    return {k: sum((p[k] for p in parts[1:]), parts[0][k].clone()) for k in parts[0]}


def open_statistics(ref: str | Path | Mapping[str, torch.Tensor], kinds: tuple[str, ...], label: str) -> TensorSource:
    """A lazy source over one model's statistics (a folder, a file or an in-memory dict) holding
    the counts of every kind in `kinds` (one-line error otherwise)."""
    if isinstance(ref, Mapping):
        src: TensorSource = StateDictSource(ref, f"statistics of {label}")
    else:
        path = stats_path(ref)
        if not path.is_file():
            raise ConfigError(f"{label}: no merge statistics at {path}; compute them with "
                              f"`mergekit-het stats {Path(ref)} --tasks TASKFILE --task NAME`")  # fmt: skip
        src = SafetensorsModel(path)
    names = src.names()
    missing = [k for k in kinds if not any(n.endswith("." + k) for n in names)]
    missing += [COUNTS[k] for k in kinds if k in COUNTS and COUNTS[k] not in names]
    if missing:
        src.close()
        raise ConfigError(f"{label}: merge statistics hold no {', '.join(missing)} (computed without --{kinds[0]}?)")
    return src


def model_statistics(src: TensorSource, kinds: tuple[str, ...]) -> dict[str, float]:
    """One model's model-wide numbers for Fisher: `fisher_examples` and `fisher_norm`, the L2
    norm of the mean Fisher over all its tensors (Fisher merging's `normalize_fishers`; one
    streaming read of the Fisher tensors). Empty for other kinds."""
    if "fisher" not in kinds:
        return {}
    examples = float(src.read(COUNTS["fisher"]))
    total = 0.0
    for name in src.names():
        if name.endswith(".fisher"):
            total += float(src.read(name).double().square().sum())
    return {"fisher_examples": examples, "fisher_norm": math.sqrt(total) / max(examples, 1.0)}
