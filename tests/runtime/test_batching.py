"""runtime.batching: every row once, in the requested order, shared across processes."""

import torch

from finetune_fixtures import make_tokenizer
from mergekit_het.runtime.batching import collate, encoder_inputs, eval_batches, length_order


def _rows(lengths: list[int]) -> list[dict]:
    return [{"input_ids": [5 + i] * n, "attention_mask": [1] * n, "labels": i} for i, n in enumerate(lengths)]


def test_eval_batches_cover_every_row_once_in_order():
    tok, rows = make_tokenizer(), _rows([3, 1, 4, 1, 5, 9, 2])
    got = list(eval_batches(rows, tok, 3))
    assert [idx.tolist() for idx, _ in got] == [[0, 1, 2], [3, 4, 5], [6]]
    for idx, batch in got:  # each batch holds exactly its rows, padded to the longest
        assert batch["labels"].tolist() == idx.tolist()
        assert batch["attention_mask"].sum(1).tolist() == [len(rows[i]["input_ids"]) for i in idx]
        assert batch["input_ids"].shape[1] == max(len(rows[i]["input_ids"]) for i in idx)


def test_eval_batches_length_order_is_stable_sort_by_token_count():
    rows = _rows([3, 1, 4, 1, 5, 9, 2])
    assert length_order(rows) == [1, 3, 6, 0, 2, 4, 5]
    idx = torch.cat([i for i, _ in eval_batches(rows, make_tokenizer(), 2, order=length_order(rows))])
    assert idx.tolist() == [1, 3, 6, 0, 2, 4, 5]


def test_eval_batches_processes_share_rows_disjointly():
    tok, rows = make_tokenizer(), _rows([2] * 11)
    shares = [torch.cat([i for i, _ in eval_batches(rows, tok, 4, rank=r, world=3)]).tolist() for r in range(3)]
    assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(sum(shares, [])) == list(range(11))


def test_collate_causal_lm_masks_padding_labels():
    tok = make_tokenizer()
    batch = collate([{"input_ids": [7, 8, 9], "attention_mask": [1, 1, 1]}, {"input_ids": [7], "attention_mask": [1]}],
                    tok, causal_lm=True)  # fmt: skip
    assert batch["labels"].tolist() == [[7, 8, 9], [7, -100, -100]]
    assert set(encoder_inputs(batch)) == {"input_ids", "attention_mask"}
