"""Every file a model folder names resolves inside that folder; nothing outside is ever opened."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergekit_het.errors import ConfigError
from mergekit_het.io.paths import locate, read_member_json
from mergekit_het.io.sources import PickleModel, SafetensorsModel
from mergekit_het.merge.side_files import copy_side_files

OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], (str, bytes, Path)):
        OPENED.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def folders(tmp_path):
    """`model/` (ours, one shard) and `secret/` (another model that must never be read)."""
    model, secret = tmp_path / "model", tmp_path / "secret"
    model.mkdir(), secret.mkdir()
    save_file({"w": torch.ones(2)}, model / "model-00001-of-00001.safetensors")
    save_file({"leak": torch.full((2,), 7.0)}, secret / "model.safetensors")
    return model, secret


def write_index(model: Path, shard: str, name: str = "model.safetensors.index.json") -> None:
    (model / name).write_text(json.dumps({"metadata": {}, "weight_map": {"w": shard}}))


@pytest.mark.parametrize("shard", ["ABS", "../secret/model.safetensors", "sub/../../secret/model.safetensors", "LINK"])
def test_index_entry_outside_folder_refused_without_opening_it(folders, shard):
    model, secret = folders
    if shard == "ABS":
        shard = str(secret / "model.safetensors")
    if shard == "LINK":
        (model / "link.safetensors").symlink_to(secret / "model.safetensors")
        shard = "link.safetensors"
    write_index(model, shard)
    OPENED.clear()
    with pytest.raises(ConfigError, match="names shard .*which is outside the model folder"):
        SafetensorsModel(model)
    assert not any(p.startswith(str(secret)) for p in OPENED), OPENED


def test_index_pointing_at_system_file_does_not_leak_its_size(folders):
    model, _ = folders
    write_index(model, "/etc/passwd")
    with pytest.raises(ConfigError) as err:
        SafetensorsModel(model)
    assert "bytes" not in str(err.value) and "/etc/passwd" in str(err.value)


def test_pickle_index_entry_outside_folder_refused(folders):
    model, secret = folders
    torch.save({"leak": torch.ones(1)}, secret / "pytorch_model.bin")
    write_index(model, "../secret/pytorch_model.bin", "pytorch_model.bin.index.json")
    with pytest.raises(ConfigError, match="names shard '../secret/pytorch_model.bin', which is outside"):
        PickleModel(model)


def test_single_weight_file_symlinked_outside_refused(folders):
    model, secret = folders
    (model / "model-00001-of-00001.safetensors").unlink()
    (model / "model.safetensors").symlink_to(secret / "model.safetensors")
    with pytest.raises(ConfigError, match="weight file 'model.safetensors', which is outside"):
        SafetensorsModel(model)


def test_hf_cache_snapshot_links_into_blobs_allowed(tmp_path):
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file({"w": torch.arange(3.0)}, repo / "blobs" / "deadbeef")
    (snap / "model.safetensors").symlink_to("../../blobs/deadbeef")
    src = SafetensorsModel(snap)
    assert torch.equal(src.read("w"), torch.arange(3.0))
    src.close()


def test_locate_symlink_loop_and_directory_are_not_files(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    (tmp_path / "d").mkdir()
    assert locate(tmp_path, "a") == ("not a file", None)
    assert locate(tmp_path, "d") == ("not a file", None)
    assert locate(tmp_path, "nope") == ("missing", None)


def test_symlinked_tokenizer_outside_not_copied(folders, tmp_path):
    model, secret = folders
    (model / "config.json").write_text('{"num_hidden_layers": 2}')
    (secret / "id_rsa").write_text("PRIVATE")
    (model / "tokenizer.json").symlink_to(secret / "id_rsa")
    (model / "vocab.txt").write_text("a\nb\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.warns(UserWarning, match="skipped tokenizer.json: a link to outside the model folder"):
        copied = copy_side_files(str(model), dest, {"w": torch.float32})
    assert sorted(copied) == ["config.json", "vocab.txt"] and not (dest / "tokenizer.json").exists()


def test_first_model_without_config_json_warns(folders, tmp_path):
    model, _ = folders
    with pytest.warns(UserWarning, match="no config.json to copy; the output will not load with transformers"):
        assert copy_side_files(str(model), tmp_path, {"w": torch.float32}) == []


@pytest.mark.parametrize("content, message", [(b"{not json", "not valid JSON"), (b"[1, 2]", "expected a JSON object"),
                                              (b"\xff\xfe", "not UTF-8")])  # fmt: skip
def test_malformed_config_json_one_line(tmp_path, content, message):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_member_json(tmp_path, "config.json")


def test_no_warning_for_regular_side_files(folders, tmp_path):
    model, _ = folders
    (model / "config.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert copy_side_files(str(model), tmp_path, {}) == ["config.json"]
