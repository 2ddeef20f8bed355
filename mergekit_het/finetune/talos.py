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

from ..errors import ConfigError
from ..runtime.device import items_per_call

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
        # tie_weights=False: every name, tied or not, gets the tensor given (or keeps its own);
        # the tied-weights search would walk every module of the model on every call
        call = lambda **kw: functional_call(model, {**fixed, **values}, args=(), kwargs=kw, tie_weights=False)  # noqa: E731
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


Batches = Iterable[tuple[torch.Tensor, dict[str, torch.Tensor]]]  # (global example indices, batch), as `eval_batches` yields
LengthGroups = dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]]  # {length: (global indices, inputs)}


def pooled_length_groups(batches: Batches) -> LengthGroups:
    """The examples of all (global indices, batch) pairs grouped by real length n across the
    batches: {n: (their global indices, their inputs cut to n tokens)}. One vmap per length over
    the whole calibration set instead of one per length and batch: with lengths that vary, a
    batch of 64 holds many lengths (22-26 for austen_book at 64 tokens), and each vmap call costs
    about one example's backward pass in launch and tracing overhead, so per-batch groups were no
    faster than a per-example loop."""
    parts: dict[int, list] = {}
    for idx, batch in batches:
        for n, (rows, inputs) in length_groups(batch).items():
            parts.setdefault(n, []).append((idx[rows], inputs))
    return {n: (torch.cat([i for i, _ in got]), {k: torch.cat([x[k] for _, x in got]) for k in got[0][1]})
            for n, got in sorted(parts.items())}  # fmt: skip


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


def per_example_logits(model: nn.Module, inputs: dict[str, torch.Tensor], logits_fn: Callable = task_logits) -> torch.Tensor:
    """The logits of every example of `inputs` (all of the same real length, no padding) as one
    plain batch with an all-ones attention mask: each example's logits as if computed alone, since
    nothing mixes the examples of a batch in eval mode (the batched kernels are those vmap uses)."""
    with torch.no_grad():
        return logits_fn(model, {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])})


def _logit_of(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return logits.gather(0, label.unsqueeze(0))[0]


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


def all_logits(model: nn.Module, groups: LengthGroups, logits_fn: Callable,
               examples: int | None, reduce: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(logits (N, C) float64 on CPU, held (N,) bool): every example's logits, as if computed
    alone (`per_example_logits`), by index, from this process's length groups. With several processes each scores its shard and `reduce` (a sum across them) gives
    every process all N = `examples` rows; `held` marks the indices some process holds."""
    rows: dict[int, torch.Tensor] = {}
    for n, (idx, inputs) in groups.items():
        got = per_example_logits(model, inputs, logits_fn).double().cpu()
        rows.update(zip(idx.tolist(), got))
    if not rows:
        raise ConfigError("TaLoS calibration: a process holds no calibration example; talos.max_examples (or the "
                          "calibration split) must have at least one example per process")
    if examples is None:
        examples = max(rows) + 1
    logits = torch.zeros(examples, len(next(iter(rows.values()))), dtype=torch.float64)
    count = torch.zeros(examples, dtype=torch.float64)
    for i, z in rows.items():
        logits[i], count[i] = z, 1
    logits, count = reduce(logits), reduce(count)
    if bool((count > 1).any()):
        raise RuntimeError("TaLoS calibration: an example is held by more than one process (the shards overlap)")
    return logits, count > 0


def sensitivity_scores(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batches: Batches,
    generator: torch.Generator,
    samples: int = 1,
    logits_fn: Callable = task_logits,
    progress: bool = False,
    chunk: int | None = None,
    examples: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] = _no_reduce,
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """TaLoS scores of this process's examples (float64, one per entry of each parameter) and the
    sampled labels of all examples in index order.

    The (indices, batch) pairs grouped by length once (`pooled_length_groups`), then two passes
    over the groups. First every example's logits, each example alone
    (its padding cut off; `all_logits`, shared across processes through `reduce`); then `samples`
    labels per example drawn on CPU with `generator` from softmax of its logits (float64), in
    global index order over all N examples, so the draws are those of one process over the
    pooled data whatever the sharding or batching (and on any device); then the gradients of the
    sampled logits of this process's examples, `chunk` (example, label) pairs at a time
    (`per_example_grads`; `chunk` None: as many as `items_per_call` allows for an example's
    float32 gradients and their float64 squares, at most 32), squared and summed in float64
    (squares of float32 values are exact there). Equal to a per-example autograd loop up to float32 round-off of the gradients
    (batched kernels; tests/finetune/test_talos.py). The caller sums the scores across processes."""
    was_training = model.training
    model.eval()
    groups = pooled_length_groups(batches)
    logits, held = all_logits(model, groups, logits_fn, examples, reduce)
    probs = torch.softmax(logits, dim=-1)
    labels = torch.zeros(len(logits), samples, dtype=torch.long)
    for i in held.nonzero().flatten().tolist():
        labels[i] = torch.tensor([int(torch.multinomial(probs[i], 1, generator=generator)) for _ in range(samples)])
    scores = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    if chunk is None:
        chunk = items_per_call(20 * sum(p.numel() for p in params.values()), next(iter(params.values())).device, 32)
    with tqdm(total=sum(len(i) for i, _ in groups.values()) * samples, unit="example", desc="talos scores",
              disable=not progress, leave=False) as bar:  # fmt: skip
        for n, (idx, inputs) in groups.items():
            for r in range(samples):
                y = labels[idx, r].to(inputs["input_ids"].device)
                for s0 in range(0, len(idx), chunk):
                    part = {k: v[s0 : s0 + chunk] for k, v in inputs.items()}
                    grads = per_example_grads(model, params, n, part, y[s0 : s0 + chunk], _logit_of, logits_fn)
                    for name, g in grads.items():
                        scores[name] += g.double().square().sum(0)
                    bar.update(len(part["input_ids"]))
    model.train(was_training)
    return scores, labels[held].flatten().tolist()


def prune_step(
    scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], keep_fraction: float
) -> dict[str, torch.Tensor]:
    """One calibration round: keep trainable the `keep_fraction` (of ALL entries) with the lowest
    scores among the currently trainable ones; frozen entries stay frozen (masks are nested)."""
    names = list(scores)
    device = scores[names[0]].device  # the selection on the scores' device (exact: kthvalue returns an entry)
    flat = torch.cat([torch.where(masks[n].to(device), scores[n], torch.inf).flatten().double() for n in names])
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
    examples: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] = _no_reduce,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Boolean masks (True = trainable) over `prunable_parameters(model)` after `rounds` rounds
    with targets (1 − sparsity)^(r/rounds). `make_batches()` gives (global indices, batch) pairs
    of this process's shard of the `examples` calibration examples; `reduce` sums across
    processes (the logits, then the scores), so the sampled labels, and the masks up to float64
    summation order, are those of one process whatever the number of processes. Parameters that get no gradient at all in the
    first round (unused by the task) are frozen and left out of the count, so the whole budget
    goes to parameters that can learn."""
    params = prunable_parameters(model)
    keep = 1.0 - sparsity
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    dead: set[str] = set()
    for r in range(1, rounds + 1):
        with frozen_scaled(params, masks, frozen_scale):
            scores, _ = sensitivity_scores(model, params, make_batches(), generator, samples, progress=progress,
                                           examples=examples, reduce=reduce)  # fmt: skip
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
