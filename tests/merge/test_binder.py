"""The parameter binder: YAML configs and merge_state_dicts refuse unknown, misplaced and
out-of-range parameters in one line, and warn once on values mergekit accepts as no-ops."""

import warnings

import pytest
import torch

from mergekit_het.errors import ConfigError
from mergekit_het.merge.binder import ParameterWarning, bind_parameters, check_parameters
from mergekit_het.merge.config import load_merge_config
from mergekit_het.merge.engine import merge_state_dicts
from mergekit_het.methods import get_method

BASE = {"w": torch.zeros(8)}
MODELS = [{"w": torch.arange(8.0)}, {"w": -torch.arange(8.0) / 2}]


def sd_merge(method="ties", parameters=None, model_parameters=None):
    return merge_state_dicts(method, MODELS, base=BASE, parameters=parameters,
                             model_parameters=model_parameters or [{"weight": 1.0}, {"weight": 1.0}])  # fmt: skip


def yaml_cfg(parameters=None, model_parameters=None, method="ties"):
    per_model = model_parameters or [{"weight": 1.0}, {"weight": 1.0}]
    return {"merge_method": method, "base_model": "b", "parameters": parameters or {},
            "models": [{"model": m, "parameters": p} for m, p in zip("xy", per_model)]}  # fmt: skip


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_merge_state_dicts_misspelt_global_parameter_is_an_error_with_did_you_mean():
    """`lamda` used to be dropped silently (the merge ran with λ = 1)."""
    msg = one_line_error(sd_merge, parameters={"lamda": 0.5})
    assert msg.startswith("merge_state_dicts: parameters: 'lamda' is not a parameter of ties (did you mean 'lambda'?)")


def test_merge_state_dicts_python_keyword_spelling_suggests_yaml_name():
    assert "(did you mean 'lambda'?)" in one_line_error(sd_merge, parameters={"lambda_": 0.5})


def test_merge_state_dicts_far_name_gets_no_did_you_mean():
    msg = one_line_error(sd_merge, parameters={"banana": 1})
    assert "'banana' is not a parameter of ties (it takes" in msg and "did you mean" not in msg


def test_merge_state_dicts_global_parameter_given_per_model_is_an_error():
    msg = one_line_error(sd_merge, model_parameters=[{"weight": 1.0, "lambda": 2.0}, {"weight": 1.0}])
    assert "model_parameters[0]: 'lambda' is a global parameter of ties; set it in the top-level parameters" in msg


@pytest.mark.parametrize("method, params, expected", [
    ("ties", {"density": 0.0}, "parameters.density: 0.0 is out of range: a density of 0 or less keeps no entry"),
    ("dare_ties", {"density": -0.5}, "parameters.density: -0.5 is out of range"),
    ("dare_linear", {"density": float("nan")}, "parameters.density: nan is not a finite number"),
    ("ties", {"lambda": float("inf")}, "parameters.lambda: inf is not a finite number"),
    ("ties", {"normalize": 1}, "parameters.normalize: expected true/false, got 1"),
    ("ties", {"rescale_norm": "l3"}, "parameters.rescale_norm: 'l3' is not one of 'l1', 'density'"),
])  # fmt: skip
def test_merge_state_dicts_meaningless_values_refused(method, params, expected):
    assert expected in one_line_error(sd_merge, method, parameters=params)


def test_merge_state_dicts_every_problem_listed_at_once():
    msg = one_line_error(sd_merge, parameters={"lamda": 1, "density": 0},
                         model_parameters=[{"weight": 1.0, "normalize": True}, {}])  # fmt: skip
    assert "'lamda'" in msg and "density: 0 is out of range" in msg and "'normalize' is a global" in msg
    assert "'weight' is required for every model; missing for model_parameters[1]" in msg


def test_merge_state_dicts_odd_density_warns_once_and_equals_density_one():
    """mergekit 0.1.5 accepts TIES density 1.5 (it keeps every entry): accepted, one warning."""
    with pytest.warns(ParameterWarning) as record:
        odd = sd_merge(model_parameters=[{"weight": 1.0, "density": 1.5}, {"weight": 1.0, "density": 2.0}])
    messages = [str(w.message) for w in record if w.category is ParameterWarning]
    assert len(messages) == 1 and "model_parameters[0].density: 1.5 is accepted" in messages[0]
    assert torch.equal(odd["w"], sd_merge(parameters={"density": 1.0})["w"])


def test_slerp_t_beyond_one_warns_and_extrapolates():
    with pytest.warns(ParameterWarning, match=r"parameters.t: 5 is accepted .*extrapolates"):
        out = merge_state_dicts("slerp", [{"w": torch.full((4,), 2.0)}], base={"w": torch.ones(4)}, parameters={"t": 5})
    assert torch.equal(out["w"], torch.full((4,), 6.0))  # parallel (cos = 1): lerp 1 + 5·(2 − 1)


def test_in_range_values_bind_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binding = bind_parameters("ties", {"density": [0.2, 1.0], "lambda": 1.5}, [{"weight": 1.0}], num_layers=3)
    assert binding.for_tensor("layers.1.mlp.weight")["density"] == [pytest.approx(0.6)]


def test_yaml_config_unknown_misplaced_and_out_of_range_in_one_error():
    msg = one_line_error(load_merge_config, yaml_cfg({"densty": 0.5, "density": -1},
                                                     [{"weight": 1.0, "normalize": False}, {"weight": 1.0}]))  # fmt: skip
    assert msg.startswith("config: ")
    assert "parameters: 'densty' is not a parameter of ties (did you mean 'density'?)" in msg
    assert "parameters.density: -1 is out of range" in msg
    assert "models[0] (x).parameters: 'normalize' is a global parameter of ties" in msg


def test_yaml_gradient_and_filter_values_are_range_checked():
    assert "density: 0 is out of range" in one_line_error(load_merge_config, yaml_cfg({"density": [0.5, 0]}))
    spec = [{"filter": "mlp", "value": float("nan")}, {"value": 0.5}]
    assert "density: nan is not a finite number" in one_line_error(load_merge_config, yaml_cfg({"density": spec}))


def test_yaml_odd_value_loads_and_warns_once_when_bound():
    cfg = load_merge_config(yaml_cfg({"density": 1.5}))  # mergekit accepts it: no error
    problems, odd = check_parameters(cfg.method, cfg.parameters, [m.parameters for m in cfg.models])
    assert problems == [] and odd == ["parameters.density: 1.5 is accepted (as mergekit does), but a density above 1 keeps every entry, as 1 does"]


def test_huge_value_is_quoted_as_an_excerpt():
    msg = one_line_error(load_merge_config, yaml_cfg({"normalize": "x" * 100_000}))
    assert len(msg) < 300


def test_method_signature_is_the_schema():
    ties = get_method("ties")
    assert list(ties.params) == ["weight", "density", "normalize", "rescale", "rescale_norm", "lambda", "int8_mask"]
    assert "stats" not in ties.params and "generator" not in get_method("dare_ties").params
