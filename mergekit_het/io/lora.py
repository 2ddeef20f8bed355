"""PEFT LoRA adapters as models: W = W₀ + B·A·scale per target weight, materialized lazily.

scale = lora_alpha / r (or lora_alpha / √r with `use_rslora`), per-module `rank_pattern` /
`alpha_pattern` honoured; `fan_in_fan_out` (GPT-2 Conv1D) and embedding adapters transpose
B·A. Tensors saved through `modules_to_save` replace the base's. DoRA is refused.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from torch import Tensor

from ..errors import ConfigError, excerpt
from .format import read_header, read_tensor
from .paths import locate, member, read_member_json
from .sources import DerivedSource, TensorSource

ADAPTER_CONFIG = "adapter_config.json"
_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.weight)?$")


def is_lora_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def read_adapter_config(adapter: Path) -> dict:
    """The adapter's config, refusing what cannot be materialized as B·A (checked before the base is opened)."""
    cfg = read_member_json(adapter, ADAPTER_CONFIG) or {}
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{adapter}: peft_type {cfg.get('peft_type')} is not LoRA")
    if cfg.get("use_dora"):
        raise ConfigError(f"{adapter}: DoRA adapters are not supported (magnitude vectors cannot be merged as B·A)")
    if locate(adapter, "adapter_model.safetensors")[0] != "file":
        raise ConfigError(f"{adapter}: no adapter_model.safetensors (a regular file inside the folder)")
    _check_adapter_config(cfg, adapter / ADAPTER_CONFIG)
    return cfg


def _check_adapter_config(cfg: dict, where: Path) -> None:
    """The keys materialization reads, of the right types (a one-line error naming the key)."""
    number = (int, float)
    checks = {"r": type(cfg.get("r")) is int and cfg["r"] > 0, "lora_alpha": isinstance(cfg.get("lora_alpha", 1), number),
              "base_model_name_or_path": isinstance(cfg.get("base_model_name_or_path") or "", str),
              **{k: isinstance(cfg.get(k) or {}, dict) and all(isinstance(v, number) and v > 0 for v in (cfg.get(k) or {}).values())
                 for k in ("rank_pattern", "alpha_pattern")}}  # fmt: skip
    bad = next((k for k, ok in checks.items() if not ok), None)
    if bad is not None:
        raise ConfigError(f"{where}: {bad} has an invalid value ({excerpt(cfg.get(bad))})")


def adapter_base_model(path: Path) -> str | None:
    return read_adapter_config(path).get("base_model_name_or_path")


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    for key, value in patterns.items():
        if module == key or re.fullmatch(rf".*\.{key}", module):
            return value
    return default


def lora_source(adapter: Path, base: TensorSource) -> DerivedSource:
    """The model `base` + adapter, reading adapter tensors (small) once up front."""
    cfg = read_adapter_config(adapter)
    weights = member(adapter, "adapter_model.safetensors", "adapter weights")
    metas, _ = read_header(weights)
    fd = os.open(weights, os.O_RDONLY)
    try:
        raw = {k: read_tensor(fd, m) for k, m in metas.items()}
    finally:
        os.close(fd)

    base_names = set(base.names())
    resolve = _name_resolver(base_names, adapter)
    pairs: dict[str, dict[str, Tensor]] = {}
    replaced: dict[str, Tensor] = {}
    for key, t in raw.items():
        key = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        m = _LORA.match(key)
        if m:
            pairs.setdefault(m["module"], {})[m["kind"]] = t
        else:
            replaced[resolve(key)] = t
            if tuple(t.shape) != base.meta(resolve(key))[0]:
                raise ConfigError(f"{adapter}: saved module tensor {key} has shape {tuple(t.shape)}, the base's is {base.meta(resolve(key))[0]}")
    deltas: dict[str, tuple[Tensor, Tensor, float, bool]] = {}
    r_default, alpha_default = cfg["r"], cfg.get("lora_alpha", cfg["r"])
    for module, ab in pairs.items():
        r = _pattern_value(cfg.get("rank_pattern") or {}, module, r_default)
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, alpha_default)
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        if set(ab) not in ({"lora_A", "lora_B"}, {"lora_embedding_A", "lora_embedding_B"}):
            raise ConfigError(f"{adapter}: module {module} has {sorted(ab)}, not one A/B pair")
        if "lora_A" in ab:
            a, b, transpose = ab["lora_A"], ab["lora_B"], bool(cfg.get("fan_in_fan_out"))
        else:
            a, b, transpose = ab["lora_embedding_A"], ab["lora_embedding_B"], True
        target = resolve(f"{module}.weight")
        want = base.meta(target)[0]
        got = (b.shape[0], a.shape[-1]) if a.dim() == 2 and b.dim() == 2 and a.shape[0] == b.shape[1] else None
        if got is None or (got[::-1] if transpose else got) != tuple(want):
            raise ConfigError(f"{adapter}: {module}: A {tuple(a.shape)} and B {tuple(b.shape)} do not make a delta of the base's shape {tuple(want)}")
        deltas[target] = (a.float(), b.float(), scale, transpose)

    def transform(name: str, w: Tensor) -> Tensor | None:
        if name in replaced:
            return replaced[name]
        if name not in deltas:
            return None
        a, b, scale, transpose = deltas[name]
        delta = (b @ a) * scale
        return w.float() + (delta.T if transpose else delta)

    return DerivedSource(base, transform, label=f"{base.label}+{adapter}")


def _name_resolver(base_names: set[str], adapter: Path):
    """Map an adapter's module path to the base checkpoint's tensor name.

    Exact match first; else drop leading components (an adapter trained on
    `BertForSequenceClassification` names `bert.encoder...`, a `BertModel` folder `encoder...`)."""

    def resolve(name: str) -> str:
        parts = name.split(".")
        for i in range(len(parts)):
            candidate = ".".join(parts[i:])
            if candidate in base_names:
                return candidate
        raise ConfigError(f"{adapter}: adapter tensor for '{name}' matches no tensor of the base model")

    return resolve
