"""TaLoS masks do not depend on the number of processes: 1, 2 and 3 gloo processes, each scoring
its `[rank::world]` share of the calibration examples in its own batches, give the same masks.

The labels are drawn from every example's logits in global index order (the logits are summed
across processes first), so they are the single process's draws; the per-example gradients are
those of each example alone; the float64 score sums differ only by summation order (~1e-16
relative), far below the gaps between the scores at the kept fraction's threshold."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from finetune_fixtures import make_bert, make_tokenizer  # tests/conftest.py puts this folder on sys.path

from mergekit_het.finetune.talos import calibrate_masks
from mergekit_het.models.classifier import PooledClassifier
from mergekit_het.models.encoder import load_encoder
from mergekit_het.runtime.batching import eval_batches

TEXTS = [" ".join(f"w{(7 * i + 3 * j) % 60}" for j in range(2 + i % 9)) for i in range(23)]


def _calibrate(rank: int, world: int, model_dir: str, init: str, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the head's initialization, the same in every process
    model = PooledClassifier(load_encoder(model_dir), 3)
    tok = make_tokenizer()
    rows = [dict(tok(t)) for t in TEXTS]

    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    masks = calibrate_masks(
        model, lambda: list(eval_batches(rows, tok, 4 + world, rank=rank, world=world)), sparsity=0.8, rounds=3,
        seed=5, examples=len(rows), reduce=reduce if world > 1 else (lambda t: t))  # fmt: skip
    if rank == 0:
        torch.save(masks, out)
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.slow
def test_masks_identical_for_1_2_and_3_processes(tmp_path: Path):
    model_dir = str(make_bert(tmp_path / "bert"))
    masks = {}
    for world in (1, 2, 3):
        out = str(tmp_path / f"masks{world}.pt")
        mp.start_processes(_calibrate, args=(world, model_dir, str(tmp_path / f"init{world}"), out), nprocs=world,
                           start_method="spawn")  # fmt: skip
        masks[world] = torch.load(out)
    kept = sum(int(m.sum()) for m in masks[1].values()) / sum(m.numel() for m in masks[1].values())
    assert 0.15 < kept < 0.25
    for world in (2, 3):
        assert masks[world].keys() == masks[1].keys()
        for name, m in masks[1].items():
            assert torch.equal(masks[world][name], m), (world, name, int((masks[world][name] != m).sum()))
