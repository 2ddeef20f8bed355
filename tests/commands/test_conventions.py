"""One command-line convention for every sub-command: the output folder, --quiet/--verbose,
help on every option, did-you-mean for unknown keys/options/commands, automatic resume with
one message, eval naming --heads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from finetune_fixtures import interrupted_at_step, make_bert, write_task
from mergekit_het.cli import build_parser, main
from mergekit_het.errors import ConfigError
from mergekit_het.federated import load_federated_config, run_federated
from mergekit_het.finetune import load_finetune_config
from mergekit_het.runtime import logs

# push uploads a folder and writes nothing locally; stats writes EXPERT/merge_stats.safetensors,
# where the regmean and fisher methods read it: neither has an output folder to name.
NO_OUTPUT = {"push", "stats"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_subcommand_has_help_on_every_option_and_the_common_flags():
    subs = _subparsers()
    assert set(subs) == {"merge", "push", "eval", "finetune", "quickstart", "federated", "continual", "extract-lora", "stats"}
    for name, p in [("(top)", build_parser()), *subs.items()]:
        blank = [a.option_strings or a.dest for a in p._actions if a.help != argparse.SUPPRESS and not (a.help or "").strip()]
        assert blank == [], f"{name}: options without help: {blank}"
    for name, p in subs.items():
        for flag in ("--quiet", "--verbose", "--debug", "--help"):
            assert flag in p._option_string_actions, f"{name} lacks {flag}"
        assert ("--output" in p._option_string_actions) == (name not in NO_OUTPUT), name


@pytest.mark.parametrize("argv, dest", [
    (["merge", "c.yml", "out"], "out"), (["merge", "c.yml", "--output", "out"], "output"),
    (["eval", "m", "--tasks", "t", "--output", "out"], "out"), (["finetune", "c.yml", "--output", "out"], "output"),
    (["federated", "c.yml", "--output", "out"], "output"), (["continual", "c.yml", "--output", "out"], "output"),
    (["quickstart", "--output", "out"], "output"),
    (["extract-lora", "--model", "a", "--base-model", "b", "--output", "out"], "out_path"),
    (["push", "folder", "me/repo"], None), (["stats", "e", "--tasks", "t", "--task", "x"], None),
])  # fmt: skip
def test_every_subcommand_parses_output_quiet_verbose(argv, dest):
    args = build_parser().parse_args([*argv, "--quiet", "--verbose"])
    assert args.quiet is True and args.verbose is True
    if dest is not None:
        assert str(getattr(args, dest)) == "out"


def test_old_output_spellings_stay_aliases():
    p = build_parser()
    assert str(p.parse_args(["eval", "m", "--tasks", "t", "--out", "o"]).out) == "o"
    assert str(p.parse_args(["extract-lora", "--model", "a", "--base-model", "b", "--out-path", "o"]).out_path) == "o"
    assert str(p.parse_args(["extract-lora", "--model", "a", "--base-model", "b", "--out", "o"]).out_path) == "o"
    assert p.parse_args(["federated", "c.yml", "--no-resume"]).restart is True
    assert p.parse_args(["finetune", "c.yml", "--resume"]).restart is False  # accepted, no effect


def test_merge_takes_its_output_once(capsys, tmp_path):
    assert main(["merge", str(tmp_path / "c.yml"), "a", "--output", "b"]) == 2
    assert "give the output folder once: merge CONFIG OUT, or merge CONFIG --output OUT" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "c.yml")]) == 2


def test_unknown_option_command_and_dashed_override(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["finetune", "c.yml", "--train.max_steps=5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option '--train.max_steps=5': config overrides are written without dashes, as train.max_steps=5" in err
    assert "mergekit-het finetune" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["federated", "c.yml", "--outptu", "x"])
    assert "unrecognized arguments: --outptu x; did you mean '--output'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mrege", "c.yml", "out"])
    assert "invalid choice: 'mrege'" in (err := capsys.readouterr().err) and "did you mean 'merge'?" in err


def test_unknown_override_key_gets_did_you_mean(tmp_path):
    raw = {"model": "m", "data": {"task_file": "t.yaml", "task": "x"}, "output": {"dir": str(tmp_path / "o")}}
    with pytest.raises(ConfigError) as exc:
        load_finetune_config(raw, ["train.max_stpes=5"])
    assert "unknown key 'train.max_stpes' in override 'train.max_stpes=5'; did you mean 'train.max_steps'?" in str(exc.value)
    assert "Extra inputs" not in str(exc.value)
    (tmp_path / "f.yaml").write_text(yaml.safe_dump({**raw, "trian": {"lr": 1e-3}}))
    with pytest.raises(ConfigError, match=r"f.yaml: unknown key 'trian'; did you mean 'train'\?"):
        load_finetune_config(tmp_path / "f.yaml")
    with pytest.raises(ConfigError, match=r"unknown key 'ghbm.bta' in override 'ghbm.bta=0.5'; did you mean 'ghbm.beta'\?"):
        load_federated_config({**raw, "data": {"task_file": "t", "task": "x"}}, ["ghbm.bta=0.5"])


def test_no_progress_bars_silences_every_bar_and_restores(capfd):
    from tqdm.auto import tqdm

    with logs.no_progress_bars():
        list(tqdm(range(3), desc="hidden", disable=False))
    list(tqdm(range(3), desc="shown"))
    err = capfd.readouterr().err
    assert "hidden" not in err and "shown" in err


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    return make_bert(root / "bert"), write_task(root / "task")


def _finetune_yaml(small, tmp_path: Path, **train) -> Path:
    bert, task = small
    cfg = {"model": str(bert), "data": {"task_file": str(task), "task": "toy", "max_length": 16}, "head": {"temperature": 0.1},
           "train": {"max_steps": 6, "batch_size": 8, "lr": 2e-3, "log_every": 2, "seed": 3, **train},
           "output": {"dir": str(tmp_path / "expert")}}  # fmt: skip
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "ft.yaml"


def test_finetune_resumes_by_itself_and_says_from_where(small, tmp_path, capsys):
    """Killed after its step-2 checkpoint, the same command resumes from step 2 (one line
    naming the work folder) with no flag; a changed lr is refused; --restart starts over."""
    config = _finetune_yaml(small, tmp_path, checkpoint_every=2)
    with interrupted_at_step(4):
        assert main(["finetune", str(config), "--quiet"]) == 130
    work = tmp_path / ".expert.partial"
    assert main(["finetune", str(config), "train.lr=0.01"]) == 2
    assert "train.lr: 0.002 -> 0.01" in capsys.readouterr().err
    assert main(["finetune", str(config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from step 2 of {work} (--restart starts over)" in out
    info = json.loads((tmp_path / "expert" / "expert.json").read_text())
    assert info["metrics"]["train_steps_this_run"] == 4
    assert main(["finetune", str(config), "--restart", "--overwrite", "--quiet"]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert json.loads((tmp_path / "expert" / "expert.json").read_text())["metrics"]["train_steps_this_run"] == 6


def test_federated_resume_message(small, tmp_path, capsys):
    bert, task = small
    raw = {"model": str(bert), "data": {"task_file": str(task), "task": "toy", "max_length": 16},
           "partition": {"scheme": "iid", "num_clients": 2}, "rounds": 3, "clients_per_round": 2,
           "client": {"lr": 0.1, "batch_size": 8, "local_steps": 1}, "output": {"dir": str(tmp_path / "fed"), "save_model": False}}  # fmt: skip

    def kill(rnd, _entry):
        if rnd == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_federated(load_federated_config(raw), on_round=kill, progress=False)
    (tmp_path / "fed.yaml").write_text(yaml.safe_dump(raw))
    assert main(["federated", str(tmp_path / "fed.yaml"), "--quiet"]) == 0
    assert f"resuming from round 1 of {tmp_path / '.fed.partial'} (--restart starts over)" in capsys.readouterr().out


def test_eval_without_heads_names_the_flag(small, capsys):
    bert, task = small
    assert main(["eval", str(bert), "--tasks", str(task), "--no-results-file"]) == 2
    err = capsys.readouterr().err
    assert "no head for task 'toy'" in err and "--heads toy=EXPERT_FOLDER" in err


def test_help_and_version_do_not_load_torch():
    """Building the parser (--help, --version, a usage error) imports no torch, transformers or
    datasets: a command's heavy imports happen when it runs."""
    import subprocess
    import sys

    code = ("import sys, mergekit_het.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'flwr') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
