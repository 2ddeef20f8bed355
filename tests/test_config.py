"""mergekit YAML schema and per-tensor parameter resolution (ALGORITHMS.md §1.0, §9 items 21-22)."""

import pytest

from mergekit_het.merge.binder import bind_parameters, evaluate, layer_position
from mergekit_het.merge.config import load_merge_config
from mergekit_het.errors import ConfigError


def cfg(**kw):
    base = {"merge_method": "ties", "base_model": "b", "models": [{"model": "a", "parameters": {"weight": 1.0}}]}
    base.update(kw)
    return base


def test_gradient_over_five_layers_interpolates():
    values = [evaluate([0, 1], f"model.layers.{i}.mlp.weight", layer_position(f"model.layers.{i}.mlp.weight", 5)) for i in range(5)]
    assert values == [0, 0.25, 0.5, 0.75, 1]
    values = [evaluate([0, 1, 0], f"model.layers.{i}.x", layer_position(f"model.layers.{i}.x", 5)) for i in range(5)]
    assert values == [0, 0.5, 1, 0.5, 0]


def test_gradient_non_layer_tensor_takes_first_value():
    assert layer_position("model.embed_tokens.weight", 5) == 0.0
    assert evaluate([0.2, 0.9], "lm_head.weight", 0.0) == 0.2


def test_gradient_of_bools_indexes_without_interpolation():
    assert evaluate([False, True], "x", 0.6) is False and evaluate([False, True], "x", 1.0) is True


def test_filter_substring_first_match_wins():
    spec = [{"filter": "self_attn", "value": 0.3}, {"value": 0.7}]
    assert evaluate(spec, "model.layers.0.self_attn.q_proj.weight", 0) == 0.3
    assert evaluate(spec, "model.layers.0.mlp.up_proj.weight", 0) == 0.7
    assert evaluate([{"filter": "*", "value": 1}], "anything", 0) == 1


def test_binding_model_param_overrides_global_then_default():
    r = bind_parameters("ties", {"density": 0.5, "lambda": 2.0}, [{"weight": 1.0, "density": 0.2}, {"weight": 3.0}], num_layers=2)
    p = r.for_tensor("encoder.layer.1.x")
    assert p == {"weight": [1.0, 3.0], "density": [0.2, 0.5], "normalize": True, "lambda_": 2.0, "int8_mask": False,
                 "rescale": False, "rescale_norm": "l1"}


def test_config_valid_loads():
    c = load_merge_config(cfg(parameters={"lambda": 1.5, "density": [0.2, 0.8]}, dtype="bfloat16"))
    assert c.method.name == "ties" and [m.model for m in c.inputs()] == ["a"]


def test_config_base_listed_in_models_is_skipped_for_task_vector_methods():
    c = load_merge_config(cfg(models=[{"model": "b"}, {"model": "a", "parameters": {"weight": 1}}]))
    assert [m.model for m in c.inputs()] == ["a"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"merge_method": "tie"}, "did you mean 'ties'"),
        ({"mystery": 1}, "unknown key 'mystery'"),
        ({"base_modle": "b"}, "unknown key 'base_modle' (did you mean 'base_model'?)"),
        ({"parameters": {"densty": 0.5}}, "'densty' is not a parameter of ties"),
        ({"models": [{"model": "a"}]}, "'weight' is required for every model; missing for models[0] (a)"),
        ({"models": [{"model": "a", "parameters": {"weight": 1, "normalize": False}}]}, "'normalize' is a global parameter"),
        ({"base_model": None}, "needs base_model"),
        ({"dtype": "bf17"}, "dtype 'bf17' is unknown"),
        ({"parameters": {"normalize": "yes"}}, "expected true/false"),
        ({"models": [{"model": "a", "parameters": {"weight": 1}, "extra": 2}]}, "Extra inputs are not permitted"),
    ],
)
def test_config_bad_input_one_line_error(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_merge_config(cfg(**overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_reports_all_problems_at_once():
    with pytest.raises(ConfigError) as err:
        load_merge_config(cfg(dtype="x", parameters={"foo": 1}))
    assert "dtype 'x'" in str(err.value) and "'foo'" in str(err.value)


def test_config_invalid_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yml"
    p.write_text("merge_method: ties\nmodels: [\n")
    with pytest.raises(ConfigError, match=r"bad.yml: invalid YAML at line \d+"):
        load_merge_config(p)


def test_config_slices_kept_with_every_model_referenced():
    c = load_merge_config({
        "merge_method": "slerp", "base_model": "a", "parameters": {"t": 0.5},
        "slices": [{"sources": [{"model": "a", "layer_range": [0, 4]}, {"model": "b", "layer_range": [0, 4]}]}],
    })  # fmt: skip
    assert c.referenced_models() == ["a", "b"] and c.slices[0].sources[1].layer_range == (0, 4)


def test_config_layer_stacking_slices_accepted():
    c = load_merge_config({
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": "a", "layer_range": [0, 2]}]}, {"sources": [{"model": "b", "layer_range": [2, 4]}]}],
    })  # fmt: skip
    assert [sl.sources[0].model for sl in c.slices] == ["a", "b"]


def test_five_mistakes_in_one_report(tmp_path, tiny_models):
    """A misspelt key, method and parameter, a string weight and a wrong path: all five in one run,
    each naming where it is."""
    p = tmp_path / "cfg.yml"
    p.write_text(f"""merge_method: tie
base_model: {tiny_models['base']}
paramters: {{lambda: 1.0}}
models:
  - model: {tiny_models['e0']}
    parameters: {{weight: "heavy", densty: 0.5}}
  - model: {tmp_path / 'nowhere'}
    parameters: {{weight: 1, density: 0.5}}
""")
    with pytest.raises(ConfigError) as err:
        load_merge_config(p)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ["unknown key 'paramters' (did you mean 'parameters'?)", "merge_method 'tie' is unknown",
                 "did you mean 'ties'", "models[0] (", ".parameters: 'densty' is not a parameter of ties (did you mean 'density'?)",
                 ".parameters.weight: expected a number, got 'heavy'", f"models[1].model: model path {tmp_path / 'nowhere'} does not exist"]:
        assert part in msg, (part, msg)


def test_did_you_mean_only_when_close():
    with pytest.raises(ConfigError) as err:
        load_merge_config(cfg(zzzzqq=1, parameters={"xyzzy": 1}))
    assert "did you mean" not in str(err.value)


def test_relative_paths_that_do_not_exist_are_reported_with_the_rest(tmp_path, tiny_models, monkeypatch):
    """`./x` and `../x/y` are paths, not Hub ids (`namespace/name`): a missing one is reported with
    the config's other problems, not after them when the model is opened."""
    from mergekit_het.io.resolve import is_hub_id

    assert is_hub_id("sentence-transformers/all-MiniLM-L6-v2") and is_hub_id("org/model.v2")
    assert not is_hub_id("./nope") and not is_hub_id("../up/one") and not is_hub_id("/abs/x") and not is_hub_id("gpt2")
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "cfg.yml"
    p.write_text(f"""merge_method: ties
base_model: ./nope2
models:
  - model: {tiny_models['e0']}
    parameters: {{weight: 1, densty: 0.5}}
  - model: ../up/nope
    parameters: {{weight: 1, density: 0.5}}
""")
    with pytest.raises(ConfigError) as err:
        load_merge_config(p)
    msg = str(err.value)
    for part in ["'densty' is not a parameter of ties", "base_model: model path ./nope2 does not exist",
                 "models[1].model: model path ../up/nope does not exist"]:
        assert part in msg, (part, msg)
