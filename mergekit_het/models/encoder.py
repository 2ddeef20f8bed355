"""Loading HF checkpoints as encoders, classifiers or causal LMs, and the frozen-head classifier.

The frozen-head protocol (see /work/shared/data/README.md, "A protocol that makes merges
comparable"): each task gets a linear head computed in closed form on the PRETRAINED encoder's
mean-pooled features (ridge regression, `mergekit_het.models.ridge`, Fed3R semantics), and only the
encoder is fine-tuned under that fixed head. Logits are `head(mean_pool(encoder(x))) / T`
(Fed3R+FT divides logits by a temperature T, 0.1 with a normalized head; T = 1 leaves them).

```python
tok = load_tokenizer(path)
enc = load_encoder(path)
feats = encode_texts(enc, tok, texts, max_length=64)       # (n, d) float32, mean-pooled
head = fit_ridge(feats, labels, num_classes, lam=0.01).normalized()
model = EncoderWithFrozenHead(enc, head, temperature=0.1)  # forward(...).logits / .loss
model = EncoderWithFrozenHead.from_folder(expert_dir)      # encoder + head.safetensors
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..errors import ConfigError
from .ridge import RidgeHead

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

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_encoder(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """The checkpoint's backbone (`AutoModel`): outputs `last_hidden_state`, no task head."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(resolve_model(name_or_path), dtype=dtype)


def model_head_labels(name_or_path: str | os.PathLike) -> int | None:
    """Number of labels of the checkpoint's sequence-classification head, None if it has none."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(resolve_model(name_or_path))
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
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=dtype)
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # decoders pool the last non-pad token
    return model


def load_causal_lm(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """`AutoModelForCausalLM` (GPT-2, Llama, ... shapes)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=dtype)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real (mask = 1) tokens: Σ_t m_t h_t / max(Σ_t m_t, 1)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _encoder_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


class EncoderWithFrozenHead(nn.Module):
    """logits = head(mean_pool(encoder(x))) / temperature with a FIXED head (buffers, never trained).

    `forward` takes the tokenizer's batch (`input_ids`, `attention_mask`[, `token_type_ids`]) and
    optional `labels`, and returns a `SequenceClassifierOutput` (cross-entropy `loss` if labels).
    """

    def __init__(self, encoder: nn.Module, head: RidgeHead, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"head temperature must be > 0, got {temperature}")
        hidden = getattr(encoder.config, "hidden_size", None)
        if hidden is not None and hidden != head.dim:
            raise ConfigError(f"head has input dim {head.dim} but the encoder's hidden size is {hidden}")
        self.encoder = encoder
        self.temperature = float(temperature)
        self.register_buffer("head_weight", head.weight.detach().float().clone(), persistent=False)
        self.register_buffer("head_bias", head.bias.detach().float().clone(), persistent=False)

    @property
    def num_labels(self) -> int:
        return self.head_weight.shape[0]

    def head(self) -> RidgeHead:
        return RidgeHead(self.head_weight.cpu(), self.head_bias.cpu(), {"temperature": str(self.temperature)})

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw)
        return mean_pool(out.last_hidden_state, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        feats = self.features(input_ids, attention_mask, **kw).float()
        logits = (feats @ self.head_weight.T + self.head_bias) / self.temperature
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> "EncoderWithFrozenHead":
        """Load an expert folder written by the frozen-head protocol: encoder weights + head file
        (its `temperature` metadata, default 1)."""
        head_path = Path(folder) / HEAD_FILE
        if not head_path.is_file():
            raise ConfigError(f"{folder} has no {HEAD_FILE}; it is not a frozen-head expert")
        head = RidgeHead.load(head_path)
        return cls(load_encoder(folder, dtype), head, float(head.metadata.get("temperature", 1.0)))


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
    was_training = encoder.training
    encoder.eval()
    chunks = []
    starts = range(0, len(texts), batch_size)
    for i in tqdm(starts, desc="features", disable=not progress, leave=False):
        batch = tokenizer(
            list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch = {k: v.to(device) for k, v in _encoder_inputs(batch).items()}
        hidden = encoder(**batch).last_hidden_state
        chunks.append(mean_pool(hidden, batch["attention_mask"]).float().cpu())
    encoder.train(was_training)
    if not chunks:
        return torch.zeros(0, encoder.config.hidden_size)
    return torch.cat(chunks)
