"""The model trained by federated/continual runners: a HF checkpoint with a linear classifier.

Two protocols, one interface (`forward(batch) -> logits`, `.head` the final `nn.Linear`):

- `pooled_head`: the checkpoint's encoder (`AutoModel`), mean pooling over real tokens and a
  trainable `nn.Linear(d, C)` head; Fed3R/SCROLL features are exactly the head's inputs.
- `classifier`: `AutoModelForSequenceClassification`; its head is the last `nn.Linear` with
  `C` outputs (BERT `classifier`, RoBERTa `classifier.out_proj`, Llama `score`).

`head_inputs` captures what enters the head (a forward pre-hook), so a closed-form ridge head
(Fed3R) can be computed for either protocol on the pretrained network and copied into `.head`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ConfigError
from ..models.encoder import load_classifier, load_encoder, mean_pool
from ..models.ridge import RidgeHead

ENCODER_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ENCODER_KEYS if k in batch}


class PooledClassifier(nn.Module):
    """logits = head(mean_pool(encoder(x)))."""

    def __init__(self, encoder: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.encoder(**_inputs(batch))
        return self.head(mean_pool(out.last_hidden_state, batch["attention_mask"]).float())


class HFClassifier(nn.Module):
    """A `...ForSequenceClassification` model with its final Linear exposed as `.head`."""

    def __init__(self, net: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.net = net
        linears = [m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
        if not linears:
            raise ConfigError(f"{type(net).__name__} has no Linear layer with {num_labels} outputs to use as head")
        self.head = linears[-1]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(**_inputs(batch)).logits.float()


def build_model(model: str, protocol: str, num_labels: int, seed: int, pad_token_id: int | None = None) -> nn.Module:
    """Load the checkpoint; a new head is initialized from `seed` (same init on every run)."""
    torch.manual_seed(seed)
    if protocol == "pooled_head":
        return PooledClassifier(load_encoder(model), num_labels)
    return HFClassifier(load_classifier(model, num_labels, pad_token_id=pad_token_id), num_labels)


def set_head(model: nn.Module, head: RidgeHead) -> None:
    """Copy a ridge head (nn.Linear layout) into the model's final Linear."""
    if tuple(model.head.weight.shape) != tuple(head.weight.shape):
        raise ConfigError(f"ridge head has shape {tuple(head.weight.shape)}, model head {tuple(model.head.weight.shape)}")
    with torch.no_grad():
        model.head.weight.copy_(head.weight)
        if model.head.bias is None:
            raise ConfigError("the model's head Linear has no bias; a ridge head needs one")
        model.head.bias.copy_(head.bias)


@torch.no_grad()
def head_inputs(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(features entering the head, labels) per batch, the model in eval mode, no gradients."""
    seen: list[torch.Tensor] = []
    hook = model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float()))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            seen.clear()
            model(batch)
            yield seen[-1].reshape(-1, seen[-1].shape[-1]), batch["labels"]
    finally:
        hook.remove()
        model.train(was_training)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters: what clients send and the server merges."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
