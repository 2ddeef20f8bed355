"""Model cards: front matter parses with huggingface_hub.ModelCard and holds what the issue lists."""

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from mergekit_het.errors import MergekitHetError
from mergekit_het.hub.card import (
    EVAL_MARKER,
    load_eval_results,
    refresh_eval_results,
    write_expert_card,
    write_merge_card,
)

CONFIG = """\
merge_method: ties
base_model: {base}
models:
  - model: org/expert-a
    parameters: {{weight: 0.6, density: 0.5}}
  - model: org/expert-b
    parameters: {{weight: 0.4, density: 0.5}}
parameters:
  normalize: true
dtype: float32
"""
RESULTS = {"tasks": {"wordnet_pos": {"accuracy": 0.875, "macro_f1": 0.8125, "n": 400},
                     "austen_book": {"accuracy": 0.5}}, "split": "test"}


@pytest.fixture
def base(tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: sentence-transformers\n---\n# base\n")
    return folder


def _merge_card(out, base, results=None):
    text = CONFIG.format(base=base)
    out.mkdir(exist_ok=True)
    path = write_merge_card(out, text, yaml.safe_load(text), str(base), ["org/expert-a", "org/expert-b"], "ties", results)
    return path, text


def test_write_merge_card_front_matter_parses_and_holds_inputs(tmp_path, base):
    path, text = _merge_card(tmp_path / "merged", base, RESULTS)

    assert path == tmp_path / "merged" / "README.md"
    card = ModelCard.load(path)
    assert card.data.base_model == ["org/expert-a", "org/expert-b"]
    assert card.data.library_name == "transformers"
    assert card.data.tags == ["merge", "mergekit-het", "ties"]
    assert card.data.license == "apache-2.0"
    assert f"```yaml\n{text}```" in card.text
    assert f"- `{base}` (base)" in card.text
    assert "- [org/expert-a](https://huggingface.co/org/expert-a): weight=0.6, density=0.5" in card.text
    assert "Parameters: normalize=true." in card.text


def test_write_merge_card_eval_results_become_model_index(tmp_path, base):
    path, _ = _merge_card(tmp_path / "merged", base, RESULTS)

    card = ModelCard.load(path)
    got = [(r.dataset_name, r.dataset_split, r.metric_type, r.metric_config, r.metric_value) for r in card.data.eval_results]
    assert got == [("wordnet_pos", "test", "accuracy", None, 0.875), ("wordnet_pos", "test", "f1", "macro", 0.8125),
                   ("austen_book", "test", "accuracy", None, 0.5)]
    assert card.data.model_name == "merged"
    assert "| task | Accuracy | Macro F1 | n |" in card.text
    assert "| wordnet_pos | 0.8750 | 0.8125 | 400 |" in card.text and "| austen_book | 0.5000 | – | – |" in card.text


def test_write_merge_card_reads_eval_results_json_of_out_dir(tmp_path, base):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "eval_results.json").write_text(json.dumps(RESULTS))
    path, _ = _merge_card(out, base)
    assert len(ModelCard.load(path).data.eval_results) == 3


def test_write_merge_card_without_results_has_no_evaluation(tmp_path, base):
    path, _ = _merge_card(tmp_path / "merged", base)
    card = ModelCard.load(path)
    assert card.data.eval_results is None and "model-index" not in path.read_text() and EVAL_MARKER not in card.text


def test_write_merge_card_malformed_results_are_skipped(tmp_path, base):
    results = {"tasks": {"a": "n/a", "b": {"accuracy": "high", "macro_f1": 0.25, "ok": True}, "c": {}}}
    path, _ = _merge_card(tmp_path / "merged", base, results)
    card = ModelCard.load(path)
    assert [(r.dataset_name, r.metric_type, r.metric_value) for r in card.data.eval_results] == [("b", "f1", 0.25)]


def test_write_merge_card_license_from_config_json_and_unknown_for_hub_base(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"license": "mit"}')
    text = "merge_method: linear\n"
    write_merge_card(tmp_path, text, {}, str(base), ["org/a"], "linear")
    assert ModelCard.load(tmp_path / "README.md").data.license == "mit"
    write_merge_card(tmp_path, text, {}, "org/base", ["org/a"], "linear")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.license is None and card.data.base_model == ["org/base", "org/a"]


def test_write_merge_card_yaml_with_backticks_stays_verbatim(tmp_path):
    text = "merge_method: linear\n# see ```notes```\nmodels: [{model: org/a}]\n"
    write_merge_card(tmp_path, text, {}, None, ["org/a"], "linear")
    assert f"````yaml\n{text}````" in ModelCard.load(tmp_path / "README.md").text


def test_write_expert_card_empty_expert_json_still_valid(tmp_path):
    card = ModelCard.load(write_expert_card(tmp_path, {}))
    assert card.data.tags == ["mergekit-het", "expert"] and card.data.base_model is None
    assert card.data.library_name == "transformers" and card.data.eval_results is None


def test_write_expert_card_metrics_and_settings(tmp_path, base):
    expert = {"base_model": str(base), "mode": "lora", "task": "wordnet_pos", "steps": 300, "sparsity": 0.9,
              "seed": 1, "metrics": {"accuracy": 0.75, "macro_f1": 0.5}}
    card = ModelCard.load(write_expert_card(tmp_path, expert))
    assert card.data.license == "apache-2.0" and card.data.base_model is None  # a local base is not a Hub id
    assert card.data.pipeline_tag == "text-classification"
    assert [(r.dataset_name, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("wordnet_pos", "accuracy", 0.75), ("wordnet_pos", "f1", 0.5)]
    for row in ["| mode | lora |", "| steps | 300 |", "| sparsity | 0.9 |", "| seed | 1 |"]:
        assert row in card.text


def test_refresh_eval_results_replaces_section_then_is_idempotent(tmp_path, base):
    path, text = _merge_card(tmp_path / "merged", base, RESULTS)
    new = {"tasks": {"fortune_topic": {"accuracy": 0.25}}}

    assert refresh_eval_results(path.parent, new, write=False) is True
    assert "fortune_topic" not in path.read_text()
    assert refresh_eval_results(path.parent, new) is True
    assert refresh_eval_results(path.parent, new) is False

    card = ModelCard.load(path)
    assert [(r.dataset_name, r.metric_value) for r in card.data.eval_results] == [("fortune_topic", 0.25)]
    assert card.text.count(EVAL_MARKER) == 1 and "wordnet_pos" not in card.text and text in card.text


def test_refresh_eval_results_leaves_foreign_card_alone(tmp_path):
    original = "---\nlicense: mit\ntags:\n- other\n---\n# someone else's card\n"
    (tmp_path / "README.md").write_text(original)
    assert refresh_eval_results(tmp_path, RESULTS) is False
    assert (tmp_path / "README.md").read_text() == original


def test_load_eval_results_bad_json_one_line_error(tmp_path):
    (tmp_path / "eval_results.json").write_text("{not json")
    with pytest.raises(MergekitHetError, match=r"eval_results\.json: not valid JSON") as excinfo:
        load_eval_results(tmp_path)
    assert "\n" not in str(excinfo.value)
    assert load_eval_results(tmp_path / "missing") is None


def test_write_merge_card_without_base_license_only_when_all_models_agree(tmp_path):
    folders = []
    for name, lic in [("a", "mit"), ("b", "mit"), ("c", "apache-2.0")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"license": lic}))
        folders.append(str(tmp_path / name))
    out = tmp_path / "out"
    out.mkdir()
    write_merge_card(out, "merge_method: linear\n", {}, None, folders[:2], "linear")
    assert ModelCard.load(out / "README.md").data.license == "mit"
    write_merge_card(out, "merge_method: linear\n", {}, None, folders, "linear")
    assert ModelCard.load(out / "README.md").data.license is None
