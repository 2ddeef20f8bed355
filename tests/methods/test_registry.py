import pytest

from mergekit_het.errors import ConfigError
from mergekit_het.methods import METHODS, get_method


def test_registry_unknown_method_suggests_closest():
    with pytest.raises(ConfigError, match=r"merge_method 'tie' is unknown.*did you mean 'ties'"):
        get_method("tie")


def test_registry_presets_have_mergekit_defaults():
    assert METHODS["ties"].params["normalize"].default is True
    assert METHODS["task_arithmetic"].params["normalize"].default is False
    assert METHODS["dare_linear"].params["rescale"].default is True
    assert METHODS["linear"].params["normalize"].default is True
    assert METHODS["ties"].params["lambda"].kwarg == "lambda_"
    assert METHODS["ties"].params["weight"].required and METHODS["ties"].params["weight"].per_model
    assert "gamma" not in METHODS["ties"].params and "gamma" in METHODS["breadcrumbs"].params


def test_registry_required_methods_present():
    for name in ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "slerp", "model_stock"]:
        assert name in METHODS
