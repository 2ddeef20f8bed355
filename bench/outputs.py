"""Compare two merged checkpoints tensor by tensor (float32 arithmetic, one tensor in memory at a time)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open


@dataclass
class Diff:
    """How far output `b` is from output `a` over all tensors."""

    tensors: int = 0
    elements: int = 0
    max_abs: float = 0.0  # max |a - b| over every element, in float32
    max_abs_tensor: str = ""  # where max_abs was found ("" when the outputs are equal)
    differing: int = 0  # elements with a != b
    max_abs_a: float = 0.0  # max |a| (scale for max_abs)
    problems: list[str] = field(default_factory=list)  # missing tensors, shape/dtype mismatches

    @property
    def differing_frac(self) -> float:
        return self.differing / self.elements if self.elements else 0.0


def tensor_files(folder: Path) -> dict[str, Path]:
    """Map tensor name -> safetensors file of a HF model folder (sharded or not)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / fname for name, fname in weight_map.items()}
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as f:
            files.update({name: path for name in f.keys()})  # noqa: SIM118 - safe_open is no mapping
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors files")
    return files


def compare_outputs(a: Path, b: Path) -> Diff:
    """Compare every tensor of folder `b` against folder `a`."""
    files_a, files_b = tensor_files(a), tensor_files(b)
    diff = Diff()
    for name in sorted(set(files_a) ^ set(files_b)):
        diff.problems.append(f"{name}: only in {a if name in files_a else b}")
    handles: dict[Path, object] = {}

    def get(path: Path, name: str) -> torch.Tensor:
        if path not in handles:
            handles[path] = safe_open(path, framework="pt")
        return handles[path].get_tensor(name)

    for name in sorted(set(files_a) & set(files_b)):
        ta, tb = get(files_a[name], name), get(files_b[name], name)
        if ta.shape != tb.shape:
            diff.problems.append(f"{name}: shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
            continue
        if ta.dtype != tb.dtype:
            diff.problems.append(f"{name}: dtype {ta.dtype} vs {tb.dtype}")
        fa, fb = ta.float(), tb.float()
        delta = (fa - fb).abs_()
        worst = float(delta.max()) if delta.numel() else 0.0
        if worst > diff.max_abs:
            diff.max_abs, diff.max_abs_tensor = worst, name
        diff.max_abs_a = max(diff.max_abs_a, float(fa.abs().max()) if fa.numel() else 0.0)
        diff.differing += int((fa != fb).sum())
        diff.elements += fa.numel()
        diff.tensors += 1
    return diff
