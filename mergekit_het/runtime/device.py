"""Device and dtype names from configs and flags, resolved once, with one-line errors.

```python
resolve_device("auto")                 # cuda if a GPU is visible, else cpu
resolve_device("cuda:1", "--device")   # ConfigError naming --device if there is no cuda:1
parse_dtype("bf16", "dtype")           # torch.bfloat16
items_per_call(8 * n_params, dev, 64)  # per-example gradients one vmapped call may hold
```
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64,
}  # fmt: skip


def device_spec_problem(spec: str) -> str | None:
    """Why `spec` is not a device name (auto, cpu, cuda, cuda:N, mps), or None if it is one."""
    kind, colon, index = spec.partition(":")
    if spec in ("auto", "cpu", "mps") or (kind == "cuda" and (not colon or index.isdigit())):
        return None
    return f"'{spec}' is not a device; use auto, cpu, cuda, cuda:N or mps"


def resolve_device(spec: str | torch.device, option: str = "device") -> torch.device:
    """The torch device named by `spec`: `auto` is cuda when a GPU is visible, else cpu; a CUDA
    (or Apple mps) device must exist. Bad names and missing GPUs raise a ConfigError naming `option`."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    problem = device_spec_problem(spec)
    if problem is not None:
        raise ConfigError(f"{option}: {problem}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option}: device 'mps' is not available (no Apple GPU visible); use cpu")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.type == "cuda" and (dev.index or 0) >= visible:
        raise ConfigError(f"{option}: device '{spec}' is not available ({visible} CUDA device(s) visible); use cpu")
    return dev


def parse_dtype(name: str | None, option: str = "dtype") -> torch.dtype | None:
    """`DTYPES[name]` (None stays None: keep the checkpoint's dtype); a ConfigError naming `option`."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ConfigError(f"{option}: unknown dtype '{name}'; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


HOST_BUDGET = 1 << 30  # bytes of working memory one vectorized call may take on a CPU (or mps)
DEVICE_BUDGET = 16 << 30  # at most this much of a CUDA device's free memory


def items_per_call(item_bytes: int, device: torch.device, cap: int) -> int:
    """How many items of `item_bytes` working memory each (e.g. one example's per-parameter
    gradients and their squares) one vectorized call may hold: a quarter of a CUDA device's free
    memory (at most `DEVICE_BUDGET`), `HOST_BUDGET` elsewhere; at least 1, at most `cap`."""
    budget = HOST_BUDGET
    if device.type == "cuda":
        budget = min(DEVICE_BUDGET, torch.cuda.mem_get_info(device)[0] // 4)
    return max(1, min(cap, budget // max(item_bytes, 1)))
