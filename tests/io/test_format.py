"""safetensors header and shard-index validation: at least as strict as the safetensors library.

Each hostile header is fed to our parser and to `safetensors.torch.load` on the same bytes; the
fuzz tests check that no input makes the parser raise anything but `TensorError`, and that we
never accept a file the library refuses.
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save

from mergekit_het.errors import TensorError
from mergekit_het.io.format import MAX_HEADER_BYTES, parse_header, read_header, read_index

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def file_bytes(header: object, data: bytes = b"", raw: bytes | None = None) -> bytes:
    blob = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def ours(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return parse_header(data[8 : 8 + n], len(data) - 8 - n, "f.safetensors")


def library_accepts(data: bytes) -> bool:
    try:
        st_load(data)
        return True
    except Exception:  # the library raises SafetensorError (and others) for bad headers
        return False


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CASES = {
    "header is a list": ([T], b"", "JSON list, not an object"),
    "entry without dtype": ({"a": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8), "no dtype"),
    "unknown dtype": ({"a": {**T, "dtype": "F7"}}, bytes(8), "unsupported dtype 'F7'"),
    "negative shape": ({"a": {**T, "shape": [-2]}}, bytes(8), "shape must be a list of non-negative"),
    "float shape": ({"a": {**T, "shape": [2.0]}}, bytes(8), "shape must be"),
    "string shape": ({"a": {**T, "shape": "2"}}, bytes(8), "shape must be"),
    "bool shape": ({"a": {**T, "shape": [True, True]}}, bytes(1 * 4), "shape must be"),
    "three offsets": ({"a": {**T, "data_offsets": [0, 4, 8]}}, bytes(8), "two non-negative integers"),
    "negative begin": ({"a": {**T, "data_offsets": [-8, 0]}}, b"", "two non-negative integers"),
    "begin after end": ({"a": {**T, "shape": [0], "data_offsets": [8, 0]}}, bytes(8), "end before they begin"),
    "overlap": ({"a": T, "b": {**T, "data_offsets": [4, 12]}}, bytes(12), "overlaps the previous tensor"),
    "gap": ({"a": {**T, "data_offsets": [4, 12]}}, bytes(12), "leaves a gap"),
    "shape larger than range": ({"a": {**T, "shape": [3]}}, bytes(8), "needs 12 bytes, data_offsets give 8"),
    "range longer than shape": ({"a": {**T, "data_offsets": [0, 12]}}, bytes(12), "needs 8 bytes, data_offsets give 12"),
    "trailing bytes": ({"a": T}, bytes(12), "tensors cover 8 data bytes, the file holds 12"),
    "truncated": ({"a": T}, bytes(4), "truncated shard"),
    "metadata not str->str": ({"__metadata__": {"k": 1}, "a": T}, bytes(8), "__metadata__ must map strings"),
    "metadata an empty list": ({"__metadata__": [], "a": T}, bytes(8), "__metadata__ must map strings"),  # found by the fuzz test
    "entry is a number": ({"a": 3}, b"", "entry is a JSON number"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parse_header_hostile_case_refused_like_the_library(case):
    header, data, message = CASES[case]
    blob = file_bytes(header, data)
    with pytest.raises(TensorError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ours(blob)
    assert not library_accepts(blob), f"the library accepts {case}: we are stricter"


def test_parse_header_duplicate_key_refused():
    raw = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    with pytest.raises(TensorError, match="names 'a' twice"):
        ours(file_bytes(None, bytes(8), raw=raw))


@pytest.mark.parametrize("raw", [b"NaN", b'{"a": Infinity}', b"[" * 100_000, b"\xff\xfe{}", b'{"a": 1' + b"9" * 5000 + b"}"])
def test_parse_header_non_json_nested_or_non_utf8_one_error(raw):
    with pytest.raises(TensorError, match="f.safetensors: "):
        ours(file_bytes(None, raw=raw))


def test_parse_header_valid_file_matches_library(tmp_path):
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(0), "i": torch.arange(3)}
    data = save(tensors, metadata={"format": "pt"})
    entries, metadata = ours(data)
    assert metadata == {"format": "pt"}
    assert {k: (v[0], v[1]) for k, v in entries.items()} == {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    assert sum(e - b for _, _, b, e in entries.values()) == 6 * 4 + 0 + 3 * 8


def test_read_header_oversized_length_refused_without_reading(tmp_path):
    f = tmp_path / "big.safetensors"
    f.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(TensorError, match="big.safetensors: not safetensors \\(header of 100000001 bytes, the limit"):
        read_header(f)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[]", "index is a JSON list"),
        (b'{"weight_map": []}', "no 'weight_map' object"),
        (b'{"weight_map": {}}', "'weight_map' is empty"),
        (b'{"weight_map": {"a": 3}}', r"weight_map\['a'\] must be a file name \(got 3\)"),
        (b"not json", "corrupt index"),
        (b"\xff", "not UTF-8"),
    ],
)
def test_read_index_malformed_one_line_error(tmp_path, content, message):
    f = tmp_path / "model.safetensors.index.json"
    f.write_bytes(content)
    with pytest.raises(TensorError, match=message):
        read_index(f)


# ---- fuzz -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12,
)
dims = st.one_of(st.integers(-2, 5), st.booleans(), st.floats(0, 4), st.text(max_size=1))
entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F7", ""]) | json_values,
        "shape": st.lists(dims, max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(-4, 40), min_size=0, max_size=3) | json_values,
    },
)
headers = st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__"]), entries | json_values, max_size=4) | json_values


def _check_one(data: bytes) -> None:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        ours(data)
        accepted = True
    except TensorError:
        accepted = False
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 3.0 and peak < 16 * 2**20 + 50 * len(data)
    if accepted:
        assert library_accepts(data), data[:200]


@FAST
@given(headers, st.integers(0, 48))
def test_fuzz_parse_header_structured_only_tensor_error_never_laxer_than_library(header, data_len):
    _check_one(file_bytes(header, bytes(data_len)))


@FAST
@given(st.binary(max_size=64), st.integers(0, 16))
def test_fuzz_parse_header_raw_bytes_only_tensor_error(raw, data_len):
    _check_one(file_bytes(None, bytes(data_len), raw=raw))


@FAST
@given(json_values | st.binary(max_size=40))
def test_fuzz_read_index_only_tensor_error(tmp_path_factory, value):
    f = tmp_path_factory.mktemp("idx") / "model.safetensors.index.json"
    f.write_bytes(value if isinstance(value, bytes) else json.dumps({"weight_map": value}).encode())
    try:
        wm = read_index(f)
    except TensorError:
        return
    assert wm and all(isinstance(k, str) and isinstance(v, str) and v for k, v in wm.items())


@pytest.mark.slow
@SLOW
@given(headers, st.integers(0, 48))
def test_fuzz_parse_header_long_run(header, data_len):
    _check_one(file_bytes(header, bytes(data_len)))
