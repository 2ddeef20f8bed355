"""Every bad input of `mergekit-het merge` gives a one-line error and leaves no output behind."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from mergekit_het.cli import main
from mergekit_het.merge.binder import ParameterWarning


def edit(folder: Path, fn) -> None:
    sd = load_file(folder / "model.safetensors")
    fn(sd)
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})


def write_cfg(tmp_path, m, **overrides) -> Path:
    cfg = {
        "merge_method": "ties", "base_model": str(m["base"]), "parameters": {"density": 0.5},
        "models": [{"model": str(m["e0"]), "parameters": {"weight": 1.0}}, {"model": str(m["e1"]), "parameters": {"weight": 1.0}}],
    }  # fmt: skip
    cfg.update(overrides)
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(tmp_path, cfg, capsys, *extra) -> tuple[int, str]:
    rc = main(["merge", str(cfg), str(tmp_path / "out"), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert leftovers == [], leftovers
    return rc, err[-1] if err else ""


NAME = "encoder.layer.1.attention.self.query.weight"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda sd: sd.pop(NAME), f"{NAME}: missing from model"),
        (lambda sd: sd.__setitem__(NAME, torch.zeros(3, 3)), f"{NAME}: model .*e1 has shape \\(3, 3\\)"),
        (lambda sd: sd.__setitem__(NAME, sd[NAME].half()), f"{NAME}: model .*e1 is torch.float16.*set dtype"),
        (lambda sd: sd[NAME].__setitem__((0, 0), float("nan")), f"{NAME}: model .*e1 holds NaN or Inf"),
    ],
)
def test_cli_bad_tensor_one_line_error_no_output(tmp_path, tiny_models, capsys, damage, message):
    edit(tiny_models["e1"], damage)
    rc, err = run_cli(tmp_path, write_cfg(tmp_path, tiny_models), capsys)
    assert rc == 2 and err.startswith("error: ")
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_cli_nan_policy_warn_merges(tmp_path, tiny_models, capsys):
    edit(tiny_models["e1"], lambda sd: sd[NAME].__setitem__((0, 0), float("inf")))
    with pytest.warns(UserWarning, match="NaN or Inf"):
        rc, _ = run_cli(tmp_path, write_cfg(tmp_path, tiny_models), capsys, "--nan-policy", "warn")
    assert rc == 0 and (tmp_path / "out" / "model.safetensors").is_file()


def test_cli_dtype_mismatch_allowed_when_dtype_given(tmp_path, tiny_models, capsys):
    edit(tiny_models["e1"], lambda sd: sd.__setitem__(NAME, sd[NAME].half()))
    rc, _ = run_cli(tmp_path, write_cfg(tmp_path, tiny_models, dtype="float32"), capsys)
    assert rc == 0


def test_cli_truncated_shard_one_line_error(tmp_path, tiny_models, capsys):
    f = tiny_models["e0"] / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    rc, err = run_cli(tmp_path, write_cfg(tmp_path, tiny_models), capsys)
    assert rc == 2 and "e0/model.safetensors: truncated shard" in err


def test_cli_missing_model_path(tmp_path, tiny_models, capsys):
    cfg = write_cfg(tmp_path, tiny_models, base_model=str(tmp_path / "nowhere"))
    rc, err = run_cli(tmp_path, cfg, capsys)
    assert rc == 2 and err == f"error: {cfg}: base_model: model path {tmp_path / 'nowhere'} does not exist"


def test_cli_invalid_yaml(tmp_path, capsys):
    cfg = tmp_path / "cfg.yml"
    cfg.write_text("models: [\n  - model: a\n")
    rc, err = run_cli(tmp_path, cfg, capsys)
    assert rc == 2 and "cfg.yml: invalid YAML at line" in err


def test_cli_output_exists_needs_overwrite(tmp_path, tiny_models, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    rc, err = run_cli(tmp_path, write_cfg(tmp_path, tiny_models), capsys)
    assert rc == 2 and "exists; pass --overwrite" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_cli_error_mid_merge_keeps_previous_output(tmp_path, tiny_models, capsys):
    """With --overwrite, a merge that fails half-way leaves the previous output untouched."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")  # a model folder: --overwrite may replace it
    (tmp_path / "out" / "keep.txt").write_text("precious")
    edit(tiny_models["e1"], lambda sd: sd["pooler.dense.weight"].__setitem__((0, 0), float("nan")))
    rc, err = run_cli(tmp_path, write_cfg(tmp_path, tiny_models), capsys, "--overwrite")
    assert rc == 2 and "pooler.dense.weight" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_cli_success_prints_summary(tmp_path, tiny_models, capsys):
    rc = main(["merge", str(write_cfg(tmp_path, tiny_models)), str(tmp_path / "out"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "merged 39 tensors" in out and " MB" in out
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "ties" in card.data.tags and "mergekit-het" in card.data.tags


def test_merge_weights_summing_to_zero_one_line_error(tmp_path, tiny_models, capsys):
    cfg = write_cfg(tmp_path, tiny_models, merge_method="linear", base_model=None, parameters={},
                    models=[{"model": str(tiny_models["e0"]), "parameters": {"weight": 1.0}},
                            {"model": str(tiny_models["e1"]), "parameters": {"weight": -1.0}}])  # fmt: skip
    rc, err = run_cli(tmp_path, cfg, capsys)
    assert rc == 2 and "linear failed: the weights sum to 0" in err


def test_merge_infinite_lambda_refused_before_any_read(tmp_path, tiny_models, capsys):
    """λ = ∞ made every output Inf (it was caught only after the merge); the binder refuses it."""
    cfg = write_cfg(tmp_path, tiny_models, merge_method="task_arithmetic", parameters={"lambda": float("inf")},
                    models=[{"model": str(tiny_models["e0"]), "parameters": {"weight": 1.0}}])  # fmt: skip
    rc, err = run_cli(tmp_path, cfg, capsys)
    assert rc == 2 and err.strip().endswith("parameters.lambda: inf is not a finite number") and "\n" not in err.strip()


def test_merge_overflowing_the_output_dtype_is_reported(tmp_path, tiny_models, capsys):
    """float16 holds at most 65504: λ = 1e6 sends the merged deltas past it (Inf in the output)."""
    cfg = write_cfg(tmp_path, tiny_models, merge_method="task_arithmetic", parameters={"lambda": 1e6}, out_dtype="float16",
                    models=[{"model": str(tiny_models["e0"]), "parameters": {"weight": 1.0}}])  # fmt: skip
    rc, err = run_cli(tmp_path, cfg, capsys)
    assert rc == 2 and "beyond the range of float16" in err
    assert not (tmp_path / "out").exists()


def test_merge_odd_mergekit_value_merges_with_one_warning_line(tmp_path, tiny_models, capsys):
    """TIES density 1.5 (given to two models): mergekit 0.1.5 accepts it and keeps everything;
    so do we, saying so once, naming the parameter."""
    cfg = write_cfg(tmp_path, tiny_models, parameters={},
                    models=[{"model": str(tiny_models[f"e{i}"]), "parameters": {"weight": 1.0, "density": 1.5}} for i in range(2)])  # fmt: skip
    with pytest.warns(ParameterWarning) as record:
        rc = main(["merge", str(cfg), str(tmp_path / "out"), "--quiet"])
    lines = [str(w.message) for w in record if w.category is ParameterWarning]
    assert rc == 0 and len(lines) == 1 and "models[0]" in lines[0] and ".density: 1.5 is accepted" in lines[0]
    assert (tmp_path / "out" / "model.safetensors").is_file()
