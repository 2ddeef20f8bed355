"""Tiny on-disk models and tasks for evaluation tests.

Tasks: `pair` (2 balanced classes, signalled by words w0-w4 / w5-w9) and `triple` (3 classes,
w10-w14 / w15-w19 / w20-w24); noise words w25-w29. Models: a random 2-layer hidden-32 BERT
base; frozen-head experts = base weights + seeded noise with a ridge head fit on the base's
features (head.safetensors); `always0` = base encoder with a head that always predicts 0.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml

from mergekit_het.models.encoder import HEAD_FILE, encode_texts
from mergekit_het.models.ridge import RidgeHead, fit_ridge
from mergekit_het.data.tasks import load_split, load_task_file

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30)]
TASKS = {"pair": 2, "triple": 3}
SIZES = {"train": 60, "validation": 30, "test": 24}


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def _bert_config(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, **kw)


def save_model(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def _rows(task: str, n: int, seed: int) -> list[str]:
    k, offset = TASKS[task], {"pair": 0, "triple": 10}[task]
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        c = i % k  # balanced
        words = [f"w{rng.randrange(25, 30)}" for _ in range(rng.randrange(1, 6))]
        words.insert(rng.randrange(len(words) + 1), f"w{offset + 5 * c + rng.randrange(5)}")
        rows.append(f"{' '.join(words)},{c}")
    return rows


@pytest.fixture(scope="session")
def task_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    for task in TASKS:
        (root / task).mkdir()
        for s, (split, n) in enumerate(SIZES.items()):
            (root / task / f"{split}.csv").write_text("\n".join(["text,label", *_rows(task, n, 10 * s)]) + "\n")
    entries = [{"name": t, "dir": t, "num_labels": k} for t, k in TASKS.items()]
    path = root / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": entries}))
    return path


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    from transformers import BertModel

    torch.manual_seed(0)
    return save_model(BertModel(_bert_config()), tmp_path_factory.mktemp("base"))


def _with_head(folder: Path, head: RidgeHead) -> Path:
    head.save(folder / HEAD_FILE)
    return folder


@pytest.fixture(scope="session")
def experts(tmp_path_factory, base, task_file) -> dict[str, Path]:
    """Frozen-head experts: base + N(0, 0.02²) noise (seed per task), head = ridge on base features."""
    from transformers import AutoTokenizer, BertModel

    enc, tok = BertModel.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    out = {}
    for seed, task in enumerate(load_task_file(task_file), start=1):
        train = load_split(task, "train")
        head = fit_ridge(encode_texts(enc, tok, train["text"]), torch.tensor(train["label"]), TASKS[task.name])
        torch.manual_seed(seed)
        expert = BertModel.from_pretrained(base)
        with torch.no_grad():
            for p in expert.parameters():
                p.add_(0.02 * torch.randn_like(p))
        out[task.name] = _with_head(save_model(expert, tmp_path_factory.mktemp(f"expert_{task.name}")), head)
    return out


@pytest.fixture(scope="session")
def always0(tmp_path_factory) -> Path:
    """Random encoder with head weight 0, bias [1, 0]: predicts class 0 for every input."""
    from transformers import BertModel

    torch.manual_seed(3)
    folder = save_model(BertModel(_bert_config()), tmp_path_factory.mktemp("always0"))
    return _with_head(folder, RidgeHead(torch.zeros(2, 32), torch.tensor([1.0, 0.0])))


@pytest.fixture(scope="session")
def seqcls3(tmp_path_factory) -> Path:
    """A plain BertForSequenceClassification folder with a 3-label head."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(4)
    return save_model(BertForSequenceClassification(_bert_config(num_labels=3)), tmp_path_factory.mktemp("seqcls3"))
