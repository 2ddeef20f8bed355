"""One error path for the whole CLI: every expected failure is one line, exit code 2, no traceback,
no staging folder left; `--debug` shows the traceback."""

from __future__ import annotations

import errno
import json
import os
import struct

import pytest
import torch
import yaml
from safetensors.torch import save_file

from mergekit_het.cli import main


def tiny(path, seed=0, config=True):
    """A two-tensor 'model' (a config.json, one safetensors file)."""
    path.mkdir()
    g = torch.Generator().manual_seed(seed)
    save_file({"a.weight": torch.randn(4, 4, generator=g), "b.bias": torch.randn(4, generator=g)}, path / "model.safetensors")
    if config:
        (path / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 1}))
    return path


@pytest.fixture
def models(tmp_path):
    return {name: tiny(tmp_path / name, seed) for seed, name in enumerate(["base", "e0", "e1"])}


def cfg_file(tmp_path, m, text=None, **over):
    cfg = {"merge_method": "ties", "base_model": str(m["base"]), "parameters": {"density": 0.5},
           "models": [{"model": str(m[e]), "parameters": {"weight": 1.0}} for e in ("e0", "e1")]}  # fmt: skip
    cfg.update(over)
    path = tmp_path / "cfg.yml"
    path.write_bytes(text if isinstance(text, bytes) else (text or yaml.safe_dump(cfg)).encode())
    return path


def run(tmp_path, capsys, *argv):
    rc = main(list(map(str, argv)))
    cap = capsys.readouterr()
    err = [line for line in cap.err.splitlines() if line.strip()]
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden == [], hidden
    assert "Traceback" not in cap.err
    return rc, err


def merge(tmp_path, capsys, cfg, *extra):
    return run(tmp_path, capsys, "merge", cfg, tmp_path / "out", "--quiet", *extra)


@pytest.mark.parametrize(
    "option, value",
    [("--chunk-size", "-1"), ("--max-shard-size", "abc"), ("--prefetch", "-1"), ("--threads", "-2"), ("--device", "banana")],
)
def test_cli_bad_option_value_one_line_exit_2(tmp_path, models, capsys, option, value):
    with pytest.raises(SystemExit) as exit_:
        main(["merge", str(cfg_file(tmp_path, models)), str(tmp_path / "out"), option, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and option in err[0] and value in err[0], err


def test_cli_yaml_not_utf8_one_line(tmp_path, models, capsys):
    rc, err = merge(tmp_path, capsys, cfg_file(tmp_path, models, text="merge_method: t\xefes\n".encode("latin-1")))
    assert rc == 2 and len(err) == 1 and "not UTF-8" in err[0]


def test_cli_density_nan_one_line(tmp_path, models, capsys):
    rc, err = merge(tmp_path, capsys, cfg_file(tmp_path, models, text=None, parameters={"density": float("nan")}))
    assert rc == 2 and len(err) == 1 and "density" in err[0], err


def test_cli_billion_laughs_config_one_short_line(tmp_path, models, capsys):
    lines = ['a0: &a0 ["lol"]'] + [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, 10)]
    rc, err = merge(tmp_path, capsys, cfg_file(tmp_path, models, text="\n".join(lines) + "\nmerge_method: linear\n"))
    assert rc == 2 and len(err) == 1 and len(err[0]) < 300 and "expands to more than" in err[0]


@pytest.mark.parametrize("which", ["config.json", "adapter_config.json"])
def test_cli_malformed_json_side_file_one_line(tmp_path, models, capsys, which):
    if which == "config.json":
        (models["base"] / "config.json").write_text("{broken")
        cfg = cfg_file(tmp_path, models)
    else:
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("[1,")
        save_file({"x": torch.ones(1)}, adapter / "adapter_model.safetensors")
        cfg = cfg_file(tmp_path, models, models=[{"model": f"{models['e0']}+{adapter}", "parameters": {"weight": 1.0}}])
    rc, err = merge(tmp_path, capsys, cfg)
    assert rc == 2 and len(err) == 1 and which in err[0] and "not valid JSON" in err[0], err


@pytest.mark.parametrize("case", ["list header", "negative shape", "overlap", "index outside", "empty index", "empty model"])
def test_cli_hostile_checkpoint_one_line(tmp_path, models, capsys, case):
    f = models["e1"] / "model.safetensors"
    if case == "list header":
        blob = b"[]"
        f.write_bytes(struct.pack("<Q", len(blob)) + blob)
    elif case in ("negative shape", "overlap"):
        hdr = {"a.weight": {"dtype": "F32", "shape": [-4, 4] if case == "negative shape" else [4, 4], "data_offsets": [0, 64]},
               "b.bias": {"dtype": "F32", "shape": [4], "data_offsets": [48, 64]}}  # fmt: skip
        blob = json.dumps(hdr).encode()
        f.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(64))
    elif case == "empty model":
        for m in models.values():
            save_file({}, m / "model.safetensors")
    else:
        f.unlink()
        weight_map = {} if case == "empty index" else {"a.weight": "../e0/model.safetensors"}
        (models["e1"] / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    rc, err = merge(tmp_path, capsys, cfg_file(tmp_path, models))
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "out").exists()


def test_cli_disk_full_one_line(tmp_path, models, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    rc, err = merge(tmp_path, capsys, cfg_file(tmp_path, models))
    assert rc == 2 and err == ["error: No space left on device (errno 28)"], err


def test_cli_disk_full_in_a_later_write_one_line_nothing_left(tmp_path, models, capsys, monkeypatch):
    # the disk fills after the first write (the direct-I/O probe): the same one line, no staging left
    real, calls = os.pwrite, []

    def fills(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "pwrite", fills)
    rc, err = merge(tmp_path, capsys, cfg_file(tmp_path, models))
    assert rc == 2 and err == ["error: No space left on device (errno 28)"], err
    assert len(calls) > 1 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_read_only_output_folder_one_line(tmp_path, models, capsys, monkeypatch):
    from pathlib import Path

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    rc, err = merge(tmp_path, capsys, cfg_file(tmp_path, models))
    assert rc == 2 and len(err) == 1 and err[0].endswith(": Permission denied") and str(tmp_path) in err[0]


def test_cli_debug_shows_traceback(tmp_path, models, capsys):
    (models["e1"] / "model.safetensors").write_bytes(b"garbage!")
    with pytest.raises(Exception, match="not safetensors|truncated"):
        main(["merge", str(cfg_file(tmp_path, models)), str(tmp_path / "out"), "--quiet", "--debug"])


def test_cli_first_model_without_config_warns(tmp_path, models, capsys):
    for m in models.values():
        (m / "config.json").unlink()
    with pytest.warns(UserWarning, match="no config.json to copy; the output will not load with transformers"):
        rc, _ = merge(tmp_path, capsys, cfg_file(tmp_path, models))
    assert rc == 0 and (tmp_path / "out" / "model.safetensors").is_file()


def test_cli_warnings_print_as_one_line():
    from mergekit_het.cli import _one_line_warning

    assert _one_line_warning(UserWarning("a\nb"), UserWarning, "x.py", 3) == "warning: a | b\n"


def test_cli_huge_value_echoed_as_excerpt(tmp_path, models, capsys):
    rc, err = merge(tmp_path, capsys, cfg_file(tmp_path, models, merge_method="x" * 500_000))
    assert rc == 2 and len(err) == 1 and len(err[0]) < 1000 and "(500002 characters)" in err[0], err[0][:300]  # the value and its quotes


def test_merge_arguments_parse_without_torch_and_the_command_sets_passive_omp(tmp_path):
    # argument checks (sizes included) do not import torch, so `merge` can choose OpenMP's wait
    # policy before torch loads it; a value the user set is kept
    import subprocess
    import sys

    code = ("import os, sys; import mergekit_het.cli as c; "
            "a = c.parse_args(['merge', 'a.yml', 'out', '--max-shard-size', '2GB', '--out-shard-size', '1B']); "
            "torch_loaded = 'torch' in sys.modules; "
            "rc = c.main(['merge', 'missing.yml', 'out', '--quiet']); "
            "print(torch_loaded, rc, os.environ.get('OMP_WAIT_POLICY'))")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = lambda extra: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,  # noqa: E731
                                       cwd=tmp_path, env={**env, **extra}).stdout.split()  # fmt: skip
    assert run({}) == ["False", "2", "PASSIVE"]
    assert run({"OMP_WAIT_POLICY": "ACTIVE"}) == ["False", "2", "ACTIVE"]
