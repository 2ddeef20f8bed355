import pytest

from mergekit_het.errors import MergekitHetError
from mergekit_het.evaluate import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_plot_cross_task_writes_png(tmp_path):
    out = plots.plot_cross_task([[1.2, 0.9], [0.8, 1.5]], ["a", "b"], ["a", "b"], tmp_path / "x.png")
    assert _is_png(out) and not list(tmp_path.glob(".*tmp*"))


def test_plot_accuracy_matrix_writes_png(tmp_path):
    out = plots.plot_accuracy_matrix([[0.9, 0.1], [0.7, 0.8]], ["a", "b"], tmp_path / "cl.png")
    assert _is_png(out)


def test_plot_method_bars_writes_png(tmp_path):
    scores = {"ta": {"a": 0.9, "b": 0.8}, "ties": {"a": 0.95, "b": 0.7}}
    assert _is_png(plots.plot_method_bars(scores, tmp_path / "bars.png"))


def test_plot_method_bars_mismatched_tasks_raises(tmp_path):
    with pytest.raises(MergekitHetError, match="method 'ties' has tasks"):
        plots.plot_method_bars({"ta": {"a": 0.9}, "ties": {"b": 0.7}}, tmp_path / "bars.png")


def test_plot_curves_accepts_values_and_xy_pairs(tmp_path):
    curves = {"fedavg": [0.1, 0.4, 0.6], "fedprox": ([2, 4, 6], [0.2, 0.5, 0.65])}
    assert _is_png(plots.plot_curves(curves, tmp_path / "fl.png"))


def test_plot_cross_task_shape_mismatch_raises(tmp_path):
    with pytest.raises(MergekitHetError, match="must be 2 x 2"):
        plots.plot_cross_task([[1.0, 2.0]], ["a", "b"], ["a", "b"], tmp_path / "x.png")


def test_plot_disentanglement_writes_png(tmp_path):
    out = plots.plot_disentanglement([[0.0, 0.2], [0.1, 0.5]], [0.0, 1.0], ("a", "b"), tmp_path / "d.png")
    assert _is_png(out)
