"""The non-tensor files of a merged model: config, tokenizer, generation config."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

from ..io.lora import adapter_base_model, is_lora_adapter
from ..io.paths import optional_member, read_member_json
from ..io.resolve import local_folder

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json",
)  # fmt: skip
# sentence-transformers metadata, so a merged sentence encoder loads as one
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def model_dir(ref: str) -> Path | None:
    """The folder holding `ref`'s config (an adapter's base for LoRA references)."""
    ref = ref.split("+")[0]
    path = local_folder(ref)
    if path.is_file():
        path = path.parent
    if is_lora_adapter(path) and not (path / "config.json").is_file():
        base = adapter_base_model(path)
        return model_dir(base) if base else None
    return path


def num_layers_of(ref: str) -> int | None:
    """Number of transformer layers from config.json (for gradient parameters), if known."""
    folder = model_dir(ref)
    cfg = read_member_json(folder, "config.json") if folder else None
    if cfg is None:
        return None
    cfg = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    return next((cfg[k] for k in _LAYER_KEYS if type(cfg.get(k)) is int and cfg[k] > 0), None)


def copy_side_files(ref: str, dest: Path, out_dtypes: dict[str, torch.dtype], copy_tokenizer: bool = True) -> list[str]:
    """Copy config/generation config (+ tokenizer) from `ref`; set the config's dtype to the
    most common floating output dtype. Returns the files copied."""
    src = model_dir(ref)
    if src is None:
        return []
    names = CONFIG_FILES + ((TOKENIZER_FILES + ST_FILES) if copy_tokenizer else ())
    copied = []
    for name in names:
        found = optional_member(src, name)  # a regular file inside the folder; links out are skipped
        if found is not None:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, dest / name)
            copied.append(name)
    if "config.json" not in copied:
        warnings.warn(f"{src}: no config.json to copy; the output will not load with transformers", stacklevel=2)
    cfg_path = dest / "config.json"
    floats = [d for d in out_dtypes.values() if d.is_floating_point]
    if cfg_path.is_file() and floats:
        dtype = max(set(floats), key=floats.count)
        cfg = read_member_json(dest, "config.json")
        dtype_name = str(dtype).removeprefix("torch.")
        cfg["torch_dtype"] = dtype_name
        if "dtype" in cfg:
            cfg["dtype"] = dtype_name
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return copied
