"""Pack the base checkpoint for the GPU machine, and unpack it there (the task data ships in
mergekit_het/data/text_tasks and travels with the working tree).

The device tool carries at most 64 MiB and the float32 all-MiniLM-L6-v2 file is 91 MB (its
mantissa bytes do not compress), so the checkpoint travels as float16 and is upcast exactly to
float32 on arrival: θ0 there is all-MiniLM-L6-v2 rounded to float16 (each weight moves by at
most 2⁻¹¹ of its magnitude, or 3·10⁻⁸ below float16's normal range),
the same θ0 for the probe, every expert and every merge.

    python bench/merge_quality/carry.py pack BASE_DIR runs/mq_carry    # here
    python bench/merge_quality/carry.py unpack runs/mq_carry BASE_OUT  # on the device
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"


def _convert(src: Path, dst: Path, dtype: torch.dtype) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != WEIGHTS and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(src / WEIGHTS)).items()}
    save_file(state, str(dst / WEIGHTS), metadata={"format": "pt"})


def pack(base: Path, dst: Path) -> None:
    _convert(base, dst / "base_fp16", torch.float16)


def unpack(src: Path, base_out: Path) -> None:
    _convert(src / "base_fp16", base_out, torch.float32)


if __name__ == "__main__":
    cmd, *paths = sys.argv[1:]
    {"pack": pack, "unpack": unpack}[cmd](*map(Path, paths))
