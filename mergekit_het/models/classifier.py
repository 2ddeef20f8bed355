"""The classifier every runner trains and evaluates: a checkpoint's encoder and a linear head.

One call convention, the Hugging Face one: `model(input_ids, attention_mask[, token_type_ids]
[, labels])` returns a `SequenceClassifierOutput` with `logits = head(features) / temperature`
and, given labels, `loss = cross_entropy(logits, labels)`; `.head` is the final `nn.Linear`.

- `PooledClassifier`: `AutoModel` encoder, mean pooling over real tokens, then `.head`. A head
  given as a `RidgeHead` (the frozen-head protocol, Fed3R) is frozen; given as a label count
  it is a new trainable `nn.Linear` initialized from torch's global generator.
- `HFClassifier`: an `AutoModelForSequenceClassification`; `.head` is its last `nn.Linear`
  with `num_labels` outputs (BERT `classifier`, RoBERTa `classifier.out_proj`, Llama `score`).

`head_inputs` yields what enters `.head` (a forward pre-hook), so a closed-form ridge head can be
computed on the pretrained network for either class and copied in with `set_head`.

```python
model = PooledClassifier(load_encoder(path), fit_ridge(...).normalized(), temperature=0.1)
model = PooledClassifier.from_folder(expert_dir)               # encoder + head.safetensors
out = model(**encoder_inputs(batch), labels=batch["labels"])  # out.logits, out.loss
```
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..errors import ConfigError
from ..runtime.batching import encoder_inputs
from ..runtime.evaluation import eval_mode
from .encoder import HEAD_FILE, load_classifier, load_encoder, mean_pool
from .ridge import RidgeHead

State = dict[str, torch.Tensor]


def _output(logits: torch.Tensor, temperature: float, labels: torch.Tensor | None) -> SequenceClassifierOutput:
    logits = logits.float() / temperature
    loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
    return SequenceClassifierOutput(loss=loss, logits=logits)


def _check_temperature(temperature: float) -> float:
    if temperature <= 0:
        raise ConfigError(f"head temperature must be > 0, got {temperature}")
    return float(temperature)


class PooledClassifier(nn.Module):
    """logits = head(mean_pool(encoder(x))) / temperature."""

    def __init__(self, encoder: nn.Module, head: RidgeHead | int, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        if isinstance(head, int):
            self.head = nn.Linear(hidden, head)
            return
        if hidden != head.dim:
            raise ConfigError(f"head has input dim {head.dim} but the encoder's hidden size is {hidden}")
        self.head = nn.Linear(head.dim, head.num_classes).requires_grad_(False)
        set_head(self, head)

    @property
    def num_labels(self) -> int:
        return self.head.out_features

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        """Mean-pooled last hidden states (float32): what enters the head."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw)
        return mean_pool(out.last_hidden_state, attention_mask).float()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return _output(self.head(self.features(input_ids, attention_mask, **kw)), self.temperature, labels)

    def ridge_head(self) -> RidgeHead:
        """The head as a `RidgeHead` on CPU (its temperature in the metadata), for `head.safetensors`."""
        return RidgeHead(self.head.weight.detach().cpu().clone(), self.head.bias.detach().cpu().clone(),
                         {"temperature": str(self.temperature), "pooling": "mean"})  # fmt: skip

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, dtype: torch.dtype | None = None) -> PooledClassifier:
        """An expert folder of the frozen-head protocol: encoder weights + `head.safetensors`
        (its `temperature` metadata, default 1)."""
        head_path = Path(folder) / HEAD_FILE
        if not head_path.is_file():
            raise ConfigError(f"{folder} has no {HEAD_FILE}; it is not a frozen-head expert")
        head = RidgeHead.load(head_path)
        return cls(load_encoder(folder, dtype), head, float(head.metadata.get("temperature", 1.0)))


class HFClassifier(nn.Module):
    """A `...ForSequenceClassification` model, logits / temperature, its final Linear as `.head`."""

    def __init__(self, net: nn.Module, num_labels: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.net = net
        linears = [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
        if not linears:
            raise ConfigError(f"{type(net).__name__} has no Linear layer with {num_labels} outputs to use as head")
        self.head = linears[-1]

    def forward(self, labels: torch.Tensor | None = None, **inputs: torch.Tensor) -> SequenceClassifierOutput:
        return _output(self.net(**encoder_inputs(inputs)).logits, self.temperature, labels)


def build_classifier(
    model: str, protocol: str, num_labels: int, seed: int, pad_token_id: int | None = None, temperature: float = 1.0
) -> PooledClassifier | HFClassifier:
    """`pooled_head` → PooledClassifier with a new head, `classifier` → HFClassifier; the new head
    is initialized from `seed` (the same init on every run)."""
    torch.manual_seed(seed)
    if protocol == "pooled_head":
        return PooledClassifier(load_encoder(model), num_labels, temperature)
    return HFClassifier(load_classifier(model, num_labels, pad_token_id=pad_token_id), num_labels, temperature)


def set_head(model: nn.Module, head: RidgeHead) -> None:
    """Copy a ridge head (nn.Linear layout: weight (C, d), bias (C,)) into `model.head`."""
    if tuple(model.head.weight.shape) != tuple(head.weight.shape):
        raise ConfigError(f"ridge head has shape {tuple(head.weight.shape)}, model head {tuple(model.head.weight.shape)}")
    if model.head.bias is None:
        raise ConfigError("the model's head Linear has no bias; a ridge head needs one")
    with torch.no_grad():
        model.head.weight.copy_(head.weight)
        model.head.bias.copy_(head.bias)


@torch.no_grad()
def head_inputs(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(features entering `model.head` (n, d) float32, labels) per batch; eval mode, no gradients."""
    seen: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float()))
    try:
        with eval_mode(model):
            for batch in batches:
                seen.clear()
                model(**encoder_inputs(batch))
                yield seen[-1].reshape(-1, seen[-1].shape[-1]), batch["labels"]
    finally:
        hook.remove()


def trainable_state(model: nn.Module) -> State:
    """Detached copies of the trainable parameters: what clients send and the server merges."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` (names of `trainable_state`) into the model's parameters in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
