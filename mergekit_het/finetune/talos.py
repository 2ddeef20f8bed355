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


def _functional(model: nn.Module, params: dict[str, nn.Parameter], logits_fn: Callable, length: int,
                device: torch.device) -> Callable:  # fmt: skip
    """logits(values, example) of one unpadded example of `length` tokens (`example`: its
    unbatched rows, e.g. input_ids), the scored parameters given as `values`, every other
    parameter and buffer fixed. The attention mask is a constant of ones, shared by every
    example under vmap (a vmapped mask would reach the data-dependent checks of HF's mask code)."""
    from torch.func import functional_call

    fixed = {**dict(model.named_buffers()), **{n: p.detach() for n, p in model.named_parameters() if n not in params}}
    ones = torch.ones(1, length, dtype=torch.long, device=device)

    def logits(values: dict[str, torch.Tensor], example: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {**{k: v.unsqueeze(0) for k, v in example.items()}, "attention_mask": ones}
        call = lambda **kw: functional_call(model, {**fixed, **values}, args=(), kwargs=kw)  # noqa: E731
        return logits_fn(call, batch)[0]

    return logits


def length_groups(batch: dict[str, torch.Tensor]) -> dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Examples of a right-padded batch grouped by real length n: {n: (their rows, their inputs
    cut to n tokens, the attention mask left out)}."""
    lengths = [int(m) for m in batch["attention_mask"].sum(dim=1).tolist()]
    groups = {}
    for n in sorted(set(lengths)):
        rows = torch.tensor([i for i, m in enumerate(lengths) if m == n])
        inputs = {k: v[rows.to(v.device), :n] if v.ndim == 2 else v[rows.to(v.device)] for k, v in batch.items()
                  if k not in ("labels", "attention_mask")}  # fmt: skip
        groups[n] = (rows, inputs)
    return groups


def per_example_grads(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    length: int,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    target: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    logits_fn: Callable = task_logits,
) -> dict[str, torch.Tensor]:
    """∂ target(logits of example i, labels[i]) / ∂θ for every example i of `inputs` (all of
    `length` real tokens) at once, (len(labels), *shape) per parameter:
    `torch.func.vmap(grad(...))` over `functional_call`."""
    from torch.func import grad, vmap

    logits = _functional(model, params, logits_fn, length, labels.device)
    values = {n: p.detach() for n, p in params.items()}
    one = lambda v, example, label: target(logits(v, example), label)  # noqa: E731
    return vmap(grad(one), in_dims=(None, 0, 0))(values, inputs, labels)


def per_example_logits(model: nn.Module, params: dict[str, nn.Parameter], length: int, inputs: dict[str, torch.Tensor],
                       logits_fn: Callable = task_logits) -> torch.Tensor:  # fmt: skip
    """The logits of every example of `inputs` (all of `length` real tokens), each computed alone."""
    from torch.func import vmap

    device = next(iter(inputs.values())).device
    logits = _functional(model, params, logits_fn, length, device)
    with torch.no_grad():
        return vmap(logits, in_dims=(None, 0))({n: p.detach() for n, p in params.items()}, inputs)


def _logit_of(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return logits.gather(0, label.unsqueeze(0))[0]


def sensitivity_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: Iterable[dict[str, torch.Tensor]],
    generator: torch.Generator,
    samples: int = 1,
    logits_fn: Callable = task_logits,
    progress: bool = False,
    chunk: int = 32,
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """TaLoS scores (float32, one per entry of each parameter) and the sampled labels, in order.

    Per batch, its examples grouped by length (`length_groups`), each example alone (its padding
    cut off): the logits of all, then labels drawn on CPU with `generator` from softmax of each
    example's logits (float64) in batch order, so a fixed seed gives the same labels on any
    device; then the gradients of the sampled logits, `chunk` (example, label) pairs at a time
    (`per_example_grads`), squared and summed. Equal to a per-example autograd loop up to float32
    round-off (batched kernels; tests/finetune/test_talos.py)."""
    was_training = model.training
    model.eval()
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    sampled: list[int] = []
    for batch in tqdm(batches, desc="talos scores", disable=not progress, leave=False):
        groups = length_groups(batch)
        logits = torch.empty(batch["input_ids"].shape[0], 0, dtype=torch.float64)
        for n, (rows, inputs) in groups.items():
            got = per_example_logits(model, params, n, inputs, logits_fn).double().cpu()
            logits = logits if logits.shape[1] else torch.empty(len(logits), got.shape[1], dtype=torch.float64)
            logits[rows] = got
        probs = torch.softmax(logits, dim=-1)
        labels = torch.tensor([[int(torch.multinomial(p, 1, generator=generator)) for _ in range(samples)] for p in probs])
        sampled += labels.flatten().tolist()
        for n, (rows, inputs) in groups.items():
            for r in range(samples):
                y = labels[rows, r].to(batch["input_ids"].device)
                for s0 in range(0, len(rows), chunk):
                    part = {k: v[s0 : s0 + chunk] for k, v in inputs.items()}
                    grads = per_example_grads(model, params, n, part, y[s0 : s0 + chunk], _logit_of, logits_fn)
                    for name, g in grads.items():
                        scores[name] += g.float().square().sum(0)
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
