"""Config files are read within bounds: size, UTF-8, alias expansion, nesting; errors quote excerpts."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergekit_het.errors import ConfigError
from mergekit_het.runtime.bounded_yaml import MAX_CONFIG_BYTES, MAX_NODES, load_yaml, parse_yaml
from mergekit_het.runtime.yaml_config import StrictModel, load_config, read_yaml_mapping


def laughs(levels: int) -> str:
    """The "billion laughs" document: level k is a list of nine aliases of level k-1 (9^levels values)."""
    lines = ['a0: &a0 ["lol"]']
    for k in range(1, levels + 1):
        lines.append(f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_load_yaml_nested_aliases_refused_fast_and_small(tmp_path):
    f = tmp_path / "bomb.yml"
    f.write_text(laughs(9))  # 9^9 = 387M values once expanded; the file is under 1 KB
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"bomb.yml: expands to more than {MAX_NODES} values"):
        load_yaml(f)
    elapsed, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 8 * 2**20, (elapsed, peak)


def test_load_yaml_ordinary_alias_allowed(tmp_path):
    f = tmp_path / "ok.yml"
    f.write_text("base: &b /models/base\nmodels:\n  - model: *b\n  - model: *b\n")
    assert load_yaml(f) == {"base": "/models/base", "models": [{"model": "/models/base"}] * 2}


def test_load_yaml_oversized_file_refused_without_parsing(tmp_path):
    f = tmp_path / "big.yml"
    f.write_bytes(b"a: " + b"x" * MAX_CONFIG_BYTES + b"\n")
    with pytest.raises(ConfigError, match=f"big.yml: larger than {MAX_CONFIG_BYTES} bytes"):
        load_yaml(f)


def test_load_yaml_not_utf8_one_line(tmp_path):
    f = tmp_path / "latin1.yml"
    f.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yml: not UTF-8 text \\(invalid byte at offset 9\\)"):
        read_yaml_mapping(f)


@pytest.mark.parametrize("text, message", [("[" * 5000, "nested|invalid YAML"), ("a: [" * 70 + "]" * 70, "nested more than 64"),
                                           ("a: !!python/object:os.system x", "invalid YAML"), ("--- 1\n--- 2\n", "invalid YAML")])  # fmt: skip
def test_parse_yaml_hostile_text_one_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_yaml(text, "cfg.yml")


class Small(StrictModel):
    name: int


def test_validation_error_quotes_only_an_excerpt(tmp_path):
    f = tmp_path / "c.yml"
    f.write_text("name: " + "x" * 1_000_000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(Small, f)
    assert len(str(err.value)) < 300 and "xxx" in str(err.value)


YAML_PIECES = st.sampled_from(list("ab:-[]{}&*,!\"' \n\t#|>?%@`") + ["*a", "&a ", "<<: *a\n", "\xff", "1e999"])


def yaml_texts(max_size: int):
    return st.lists(YAML_PIECES, max_size=max_size).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_texts(60))
def test_fuzz_parse_yaml_only_config_error_within_bounds(text):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        parse_yaml(text, "f.yml")
    except ConfigError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 3.0 and peak < 16 * 2**20


@pytest.mark.slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_texts(200))
def test_fuzz_parse_yaml_long_run(text):
    test_fuzz_parse_yaml_only_config_error_within_bounds.hypothesis.inner_test(text)
