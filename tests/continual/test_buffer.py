import random

import pytest

from mergekit_het.continual.buffer import ClassBalancedBuffer


def _stream(seed: int):
    """100 examples of 5 classes (class c has 8 + 4c examples), shuffled and cut into random chunks."""
    items = [(uid, c) for c in range(5) for uid in range(100 * c, 100 * c + 8 + 4 * c)]
    rng = random.Random(seed)
    rng.shuffle(items)
    chunks, i = [], 0
    while i < len(items):
        n = rng.randint(1, 9)
        chunks.append(items[i : i + n])
        i += n
    return chunks


@pytest.mark.parametrize("memory", [5, 12, 23, 60])
def test_buffer_content_is_schedule_free_and_class_balanced(memory):
    """Any order and chunking of the same examples gives the same final buffer; each class keeps
    min(n_c, max(1, ⌊M/C⌋)) examples; classes arriving one by one (class-incremental) too."""
    finals = []
    for seed in range(4):
        buf = ClassBalancedBuffer(memory, seed=3)
        for chunk in _stream(seed):
            buf.add([u for u, _ in chunk], [c for _, c in chunk])
        finals.append(buf.uids())
    by_class = ClassBalancedBuffer(memory, seed=3)
    for c in (3, 0, 4, 1, 2):
        items = [(u, k) for chunk in _stream(0) for u, k in chunk if k == c]
        by_class.add([u for u, _ in items], [k for _, k in items])
    finals.append(by_class.uids())
    assert all(f == finals[0] for f in finals)
    m = max(1, memory // 5)
    assert buf.counts() == {c: min(8 + 4 * c, m) for c in range(5)}


def test_split_holds_out_the_lowest_keys_of_each_class():
    buf = ClassBalancedBuffer(40, seed=0)
    buf.add(range(40), [i % 4 for i in range(40)])
    train, val = buf.split(0.2)
    assert len(val) == 4 * 2 and len(train) == 4 * 8 and not set(train) & set(val)
    for c in range(4):
        keys = sorted(buf.by_class[c])
        assert {u for _, u in keys[:2]} <= set(val)
