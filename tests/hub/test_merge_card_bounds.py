"""The merge card copies at most MAX_CONFIG_CHARS of the config: a short one verbatim (comments
kept), a long one re-dumped without comments and cut."""

import yaml

from mergekit_het.hub.card import MAX_CONFIG_CHARS, write_merge_card


def test_short_config_copied_verbatim_with_comments(tmp_path):
    text = "# my favourite merge\nmerge_method: linear\n"
    write_merge_card(tmp_path, text, yaml.safe_load(text), None, ["org/a"], "linear", title="pretty-name")
    card = (tmp_path / "README.md").read_text()
    assert "# my favourite merge\nmerge_method: linear\n" in card and "\n# pretty-name\n" in card


def test_long_values_cut_to_the_bound(tmp_path):
    config = {"merge_method": "linear", "models": [{"model": f"org/m{i}", "parameters": {"weight": 1.0}} for i in range(2000)]}
    text = yaml.safe_dump(config)
    assert len(text) > 5 * MAX_CONFIG_CHARS
    write_merge_card(tmp_path, text, config, None, ["org/m0"], "linear")
    card = (tmp_path / "README.md").read_text()
    assert "the whole config is in mergekit_config.yml" in card
    assert len(card) < MAX_CONFIG_CHARS + 3_000
