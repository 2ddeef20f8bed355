"""TaLoS mask calibration (Iurada, Ciccone, Tommasi, "Efficient Model Editing with Task-Localized
Sparse Fine-tuning", ICLR 2025, arXiv:2504.02620; semantics of iurada/talos-task-arithmetic).

Sensitivity of entry j at the current parameters θ (model in eval mode, head frozen):

    s_j = Σ_x Σ_{r=1..R} (∂ f_{ŷ_r(x)}(x; θ) / ∂θ_j)²,    ŷ_r(x) ~ Categorical(softmax(f(x; θ)))

i.e. per-example squared gradients of the RAW logit of a label sampled from the model's own
predictive distribution, summed over the calibration set (no normalization).

Calibration runs R rounds (4): round r targets keep^(r/R) of all prunable entries; entries
already frozen get score +inf; one GLOBAL threshold t = kthvalue(scores of active entries,
k = min(int(k_r·N), N_active − 1)); entries with score ≤ t stay TRAINABLE — the LOW-sensitivity
parameters are fine-tuned. During later rounds frozen entries are scaled by 0.1 in the forward.

Prunable: every trainable parameter except embeddings (nn.Embedding, incl. a tied LM head) and
a classification head; those are frozen under TaLoS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

HEAD_NAMES = ("classifier", "score", "lm_head")  # sequence-classification / LM heads of HF models


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters TaLoS scores: all but embedding tables and classification/LM heads."""
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    out = {}
    for name, p in model.named_parameters():
        top = name.split(".")[0]
        if p.requires_grad and id(p) not in embedding_ids and top not in HEAD_NAMES:
            out[name] = p
    return out


def task_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(n, C) logits: a classifier's output, or a causal LM's next-token logits at the last real token."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    if logits.ndim == 3:
        last = batch["attention_mask"].sum(dim=1) - 1
        logits = logits[torch.arange(logits.shape[0], device=logits.device), last]
    return logits


def _single(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Example i of a padded batch, with its padding cut off (right padding)."""
    n = int(batch["attention_mask"][i].sum())
    return {k: v[i : i + 1, :n] if v.ndim == 2 else v[i : i + 1] for k, v in batch.items() if k != "labels"}


def sensitivity_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: Iterable[dict[str, torch.Tensor]],
    generator: torch.Generator,
    samples: int = 1,
    logits_fn: Callable = task_logits,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """TaLoS scores (float32, one per entry of each parameter) and the sampled labels, in order.

    Labels are drawn on CPU with `generator` from softmax of the example's logits (float64), so a
    fixed seed gives the same labels on any device."""
    was_training = model.training
    model.eval()
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    sampled: list[int] = []
    plist = list(params.values())
    for batch in tqdm(batches, desc="talos scores", disable=not progress, leave=False):
        n_ex = batch["input_ids"].shape[0]
        for i in range(n_ex):
            logits = logits_fn(model, _single(batch, i))[0]
            probs = torch.softmax(logits.detach().double().cpu(), dim=-1)
            for r in range(samples):
                y = int(torch.multinomial(probs, 1, generator=generator))
                sampled.append(y)
                grads = torch.autograd.grad(logits[y], plist, retain_graph=r + 1 < samples, allow_unused=True)
                for (name, _), g in zip(params.items(), grads, strict=True):
                    if g is not None:
                        scores[name] += g.float().square()
    model.train(was_training)
    return scores, sampled


def prune_step(
    scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], keep_fraction: float
) -> dict[str, torch.Tensor]:
    """One calibration round: keep trainable the `keep_fraction` (of ALL entries) with the lowest
    scores among the currently trainable ones; frozen entries stay frozen (masks are nested)."""
    names = list(scores)
    flat = torch.cat([torch.where(masks[n], scores[n], torch.inf).flatten().float().cpu() for n in names])
    n_active = int(sum(int(masks[n].sum()) for n in names))
    # + 1e-6 so that e.g. (1 - 0.9) * 1560 = 155.99999999999997 gives 156, not 155
    k = min(int(keep_fraction * flat.numel() + 1e-6), n_active - 1)
    if k < 1:
        return {n: torch.zeros_like(masks[n]) for n in names}
    threshold = torch.kthvalue(flat, k).values
    return {n: masks[n] & (scores[n].to(threshold.device) <= threshold).to(masks[n].device) for n in names}


@contextmanager
def frozen_scaled(params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor], scale: float):
    """Temporarily multiply frozen entries (mask False) by `scale`; restores them bit-exactly."""
    saved = {}
    with torch.no_grad():
        for n, p in params.items():
            if not bool(masks[n].all()):
                saved[n] = p.detach().clone()
                p.mul_(torch.where(masks[n], 1.0, scale).to(p.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for n, data in saved.items():
                params[n].copy_(data)


def calibrate_masks(
    model: nn.Module,
    make_batches: Callable[[], Iterable[dict[str, torch.Tensor]]],
    *,
    sparsity: float,
    rounds: int = 4,
    frozen_scale: float = 0.1,
    samples: int = 1,
    seed: int = 0,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Boolean masks (True = trainable) over `prunable_parameters(model)` after `rounds` rounds
    with targets (1 − sparsity)^(r/rounds). `reduce` sums scores across processes (each process
    scores its own shard of the calibration data). Parameters that get no gradient at all in the
    first round (unused by the task) are frozen and left out of the count, so the whole budget
    goes to parameters that can learn."""
    params = prunable_parameters(model)
    keep = 1.0 - sparsity
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    dead: set[str] = set()
    for r in range(1, rounds + 1):
        with frozen_scaled(params, masks, frozen_scale):
            scores, _ = sensitivity_scores(model, params, make_batches(), generator, samples, progress=progress)
        scores = {n: reduce(s) for n, s in scores.items()}
        if r == 1:  # parameters the task never uses (e.g. BERT's pooler under mean pooling)
            dead = {n for n, s in scores.items() if not bool(s.any())}
        live = {n: scores[n] for n in scores if n not in dead}
        masks = prune_step(live, {n: masks[n] for n in live}, keep ** (r / rounds))
        masks.update({n: torch.zeros_like(params[n], dtype=torch.bool) for n in dead})
    return masks


def mask_fraction(masks: dict[str, torch.Tensor]) -> float:
    """Fraction of entries that are trainable."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / max(total, 1)
