"""Loading HF checkpoints as encoders, classifiers or causal LMs; mean-pooled features.

The frozen-head protocol (docs/finetune.md, "Protocols"): each task gets a linear head computed
in closed form on the PRETRAINED encoder's mean-pooled features (ridge regression, `mergekit_het.models.ridge`, Fed3R semantics), and only the
encoder is fine-tuned under that fixed head. Logits are `head(mean_pool(encoder(x))) / T`
(Fed3R+FT divides logits by a temperature T, 0.1 with a normalized head; T = 1 leaves them).

```python
tok = load_tokenizer(path)
enc = load_encoder(path)
feats = encode_texts(enc, tok, texts, max_length=64)       # (n, d) float32, mean-pooled
head = fit_ridge(feats, labels, num_classes, lam=0.01).normalized()
model = PooledClassifier(enc, head, temperature=0.1)       # models.classifier: .logits / .loss
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..runtime.batching import encoder_inputs, eval_batches
from ..runtime.evaluation import eval_mode
from ..runtime.logs import quiet_third_party

HEAD_FILE = "head.safetensors"


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Return `name_or_path` if it is a local model folder or a Hub id whose config can be
    fetched; else raise a one-line ConfigError (checked before any weight is read)."""
    name = str(name_or_path)
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ConfigError(f"model folder {name} has no config.json; is it a Hugging Face model folder?")
        return name
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "", 1)
    if looks_local or not name:
        raise ConfigError(f"model '{name}' does not exist (no such folder)")
    from transformers import AutoConfig

    try:
        with quiet_third_party():
            AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"model '{name}' is neither a local folder nor a reachable Hugging Face Hub id ({reason[:120]})"
        ) from None
    return name


def load_tokenizer(name_or_path: str | os.PathLike):
    """AutoTokenizer; decoders without a pad token get pad = eos (needed for batching)."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    with quiet_third_party():
        tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_encoder(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """The checkpoint's backbone (`AutoModel`): outputs `last_hidden_state`, no task head."""
    from transformers import AutoModel

    path = resolve_model(name_or_path)
    with quiet_third_party():
        return AutoModel.from_pretrained(path, dtype=dtype)


def model_head_labels(name_or_path: str | os.PathLike) -> int | None:
    """Number of labels of the checkpoint's sequence-classification head, None if it has none."""
    from transformers import AutoConfig

    path = resolve_model(name_or_path)
    with quiet_third_party():
        cfg = AutoConfig.from_pretrained(path)
    if any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or [])):
        return int(cfg.num_labels)
    return None


def load_classifier(
    name_or_path: str | os.PathLike, num_labels: int, dtype: torch.dtype | None = None, pad_token_id: int | None = None
) -> nn.Module:
    """`AutoModelForSequenceClassification` with `num_labels` classes. A checkpoint that already
    has a classification head must have that many labels; one without gets a new head."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name_or_path)
    have = model_head_labels(path)
    if have is not None and have != num_labels:
        raise ConfigError(f"model {path} has a {have}-label classification head but the task has {num_labels} labels")
    with quiet_third_party():
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=dtype)
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # decoders pool the last non-pad token
    return model


def load_causal_lm(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """`AutoModelForCausalLM` (GPT-2, Llama, ... shapes)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    with quiet_third_party():
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real (mask = 1) tokens: Σ_t m_t h_t / max(Σ_t m_t, 1)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


@torch.no_grad()
def encode_texts(
    encoder: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Mean-pooled last-layer features (n, d) as float32 on CPU; the encoder runs in eval mode."""
    from tqdm.auto import tqdm

    device = device or next(encoder.parameters()).device
    rows = [dict(r) for r in _rows(tokenizer(list(texts), truncation=True, max_length=max_length))]
    chunks = []
    with eval_mode(encoder):
        for _, batch in tqdm(eval_batches(rows, tokenizer, batch_size, device=device), desc="features",
                             total=-(-len(rows) // batch_size), disable=not progress, leave=False):
            hidden = encoder(**encoder_inputs(batch)).last_hidden_state
            chunks.append(mean_pool(hidden, batch["attention_mask"]).float().cpu())
    if not chunks:
        return torch.zeros(0, encoder.config.hidden_size)
    return torch.cat(chunks)


def _rows(encoding) -> list[dict]:
    """A tokenizer's column-wise output for n texts as n row dicts."""
    keys = list(encoding.keys())
    return [{k: encoding[k][i] for k in keys} for i in range(len(encoding["input_ids"]))]
