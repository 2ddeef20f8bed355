"""The merge-quality table: normalization, TaLoS selection on validation, targets."""

import pytest

from bench.merge_quality import table

TASKS = ["a", "b"]


def _results(base, experts, methods, cross):
    def model(acc, params=None):
        return {"tasks": {t: {"accuracy": v, "macro_f1": v, "n": 100} for t, v in zip(TASKS, acc)},
                "params": params or {}}

    models = {"base": model(base), table.EXPERTS: model(experts)}
    models.update({n: model(acc, p) for n, (acc, p) in methods.items()})
    return {"tasks": TASKS, "models": models, "cross_task": {"vectors": TASKS, "normalized": cross}}


def test_rows_of_experts_normalized_one_and_merges_divided_by_same_kind_expert():
    res = {"dense": _results([0.5, 0.4], [0.8, 0.5], {"ties": ([0.4, 0.5], {"lambda": 1.2})}, [[1, 0.9], [0.8, 1]]),
           "talos": _results([0.5, 0.4], [0.5, 0.25], {"ties": ([0.25, 0.25], {})}, [[1, 1], [1, 1]])}
    rows = table.rows_of(res)
    assert rows[0]["model"] == "pretrained probe" and rows[0]["acc"] == {"a": 0.5, "b": 0.4}
    experts = [r for r in rows if r["model"] == "experts"]
    assert [r["norm"] for r in experts] == [{"a": 1.0, "b": 1.0}] * 2
    ties = {r["kind"]: r for r in rows if r["model"] == "ties"}
    assert ties["dense"]["norm"] == {"a": 0.5, "b": 1.0} and ties["talos"]["norm"] == {"a": 0.5, "b": 1.0}
    tg = table.targets(res, rows, TASKS)
    assert tg["talos_gap"] == pytest.approx({"a": 0.3, "b": 0.25}) and not tg["talos_gap_met"]
    assert tg["talos_min_cross"] == 1 and tg["talos_cross_met"]
    assert tg["best_merge"]["kind"] == "dense" and tg["best_merge"]["mean_accuracy"] == pytest.approx(0.45)
    assert not tg["best_merge_met"]


def test_candidate_summary_gap_and_min_off_diagonal():
    dense = _results([0.5, 0.5], [0.9, 0.8], {}, [[1, 0.7], [0.6, 1]])
    tal = _results([0.5, 0.5], [0.88, 0.81], {}, [[1.2, 0.97], [0.99, 1.3]])
    c = table.candidate_summary(tal, dense)
    assert c["gap"] == pytest.approx({"a": 0.02, "b": -0.01})
    assert c["max_gap"] == pytest.approx(0.02) and c["min_cross"] == 0.97  # diagonal ignored
    assert c["mean_accuracy"] == pytest.approx(0.845)


def _cand(max_gap, min_cross, mean):
    return {"max_gap": max_gap, "min_cross": min_cross, "mean_accuracy": mean}


def test_select_talos_feasible_candidate_with_best_validation_accuracy_wins():
    cands = {"x": _cand(0.01, 0.99, 0.70), "y": _cand(0.0, 0.985, 0.72), "z": _cand(-0.01, 0.9, 0.80)}
    assert table.select_talos(cands, max_gap=0.02, min_cross=0.98) == "y"


def test_select_talos_none_feasible_smallest_shortfall_wins():
    cands = {"x": _cand(0.05, 0.99, 0.70), "y": _cand(0.03, 0.975, 0.60), "z": _cand(0.00, 0.90, 0.80)}
    # shortfalls: x 0.03, y 0.01 + 0.005, z 0.08
    assert table.select_talos(cands, max_gap=0.02, min_cross=0.98) == "y"
    with pytest.raises(ValueError):
        table.select_talos({}, max_gap=0.02, min_cross=0.98)


def test_frontier_points_gap_cross_and_best_merge_then_summary_and_plot(tmp_path):
    """The frontier of two TaLoS points against dense: kept fraction and lr from the overrides,
    validation gap/off-diagonal from the selection results, the best test merge per point, and
    the summary writes its section and frontier.png."""
    dense_val = _results([0.5, 0.5], [0.9, 0.8], {}, [[1, 0.7], [0.6, 1]])
    settings = {"k10": ["talos.sparsity=0.9", "train.lr=5e-4"], "k30": ["talos.sparsity=0.7", "train.lr=2e-4"]}
    cands = {"k10": table.candidate_summary(_results([0.5, 0.5], [0.8, 0.78], {}, [[1, 0.99], [0.95, 1]]), dense_val),
             "k30": table.candidate_summary(_results([0.5, 0.5], [0.9, 0.79], {}, [[1, 0.8], [0.9, 1]]), dense_val)}
    merges = {"k10": _results([0.5, 0.5], [0.8, 0.78], {"ties": ([0.6, 0.7], {}), "tsv": ([0.7, 0.7], {})}, [[1, 1], [1, 1]])}
    front = table.frontier(settings, cands, {"dense": table.candidate_summary(dense_val, dense_val)}, merges)
    k10, k30 = front["points"]["k10"], front["points"]["k30"]
    assert (k10["kept"], k10["lr"], k30["kept"]) == (pytest.approx(0.1), 5e-4, pytest.approx(0.3))
    assert k10["max_gap"] == pytest.approx(0.1) and k10["min_cross"] == 0.95
    assert k30["max_gap"] == pytest.approx(0.01) and k30["min_cross"] == 0.8
    assert k10["best_merge"] == ("tsv", pytest.approx(0.7)) and k30["best_merge"] is None
    assert front["references"]["dense"] == {"max_gap": 0.0, "min_cross": 0.6, "mean_accuracy": pytest.approx(0.85)}
    md = table.frontier_table(front, ["ties", "tsv"])
    assert md.index("| k30 |") < md.index("| k10 |")  # sorted by lr, then kept
    assert "| 0.6500 | 0.7000 | tsv 0.7000 |" in md
    assert table.plot_frontier(front, tmp_path / "f.png").stat().st_size > 1000
