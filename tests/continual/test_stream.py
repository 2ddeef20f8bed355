from collections import Counter

from mergekit_het.continual import load_continual_config
from mergekit_het.continual.stream import build_pool, schedules, task_order
from mergekit_het.models.encoder import load_tokenizer


def test_schedules_reorder_and_cut_the_same_pool(cl_config):
    """Every schedule's experiences are disjoint class sets covering all classes, with the
    schedule's sizes; together they hold every pool example exactly once; schedules differ."""
    cfg = load_continual_config(cl_config(stream={"by": "classes", "experience_sizes": [[2, 2], [1, 3]],
                                                  "chunk_sizes": [4, 5], "schedules": 4}))  # fmt: skip
    pool = build_pool(cfg, load_tokenizer(cfg.model))
    assert pool.num_classes == 4 and Counter(pool.labels("train").tolist()) == {c: 12 for c in range(4)}
    scheds = schedules(cfg, pool)
    for s in scheds:
        sizes = [len(e.classes) for e in s.experiences]
        assert sizes == ([2, 2] if s.index % 2 == 0 else [1, 3]) and s.chunk == (4 if s.index % 2 == 0 else 5)
        assert sorted(c for e in s.experiences for c in e.classes) == [0, 1, 2, 3]
        assert sorted(u for e in s.experiences for u in e.train) == list(range(len(pool.train)))
        assert sorted(i for e in s.experiences for i in e.eval) == list(range(len(pool.eval)))
        for e in s.experiences:
            assert {pool.train[u]["labels"] for u in e.train} == set(e.classes)
    assert len({tuple(tuple(e.classes) for e in s.experiences) for s in scheds}) > 1


def test_experiences_cut_near_equal(cl_config):
    cfg = load_continual_config(cl_config(stream={"by": "classes", "experiences": 3, "schedules": 2}))
    pool = build_pool(cfg, load_tokenizer(cfg.model))
    assert [[len(e.classes) for e in s.experiences] for s in schedules(cfg, pool)] == [[2, 1, 1], [2, 1, 1]]


def test_task_orders_are_distinct_for_the_first_factorial_schedules():
    orders = [tuple(task_order(3, seed=4, k=k)) for k in range(6)]
    assert sorted(orders) == sorted(__import__("itertools").permutations(range(3)))
    assert task_order(3, 4, 6) == task_order(3, 4, 0) and sorted(task_order(9, 0, 2)) == list(range(9))
