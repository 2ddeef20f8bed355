"""mergekit-yaml 0.1.5's flags on `mergekit-het merge`: every one parses, with the same meaning."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mergekit_het.cli import build_parser
from mergekit_het.commands.options import shard_size

# mergekit-yaml 0.1.5 --help, every option (value-taking ones with a sample value)
MERGEKIT_YAML_FLAGS = [
    ["--allow-crimes"], ["--no-allow-crimes"], ["--unsafe-truncate-embeddings"], ["--no-unsafe-truncate-embeddings"],
    ["--trust-remote-code"], ["--no-trust-remote-code"], ["--transformers-cache", "/tmp/hf"], ["--lora-merge-cache", "/tmp/lc"],
    ["--lora-merge-dtype", "bfloat16"], ["--random-seed", "7"], ["-v"], ["-vv"], ["--quiet"], ["--no-quiet"], ["--cuda"],
    ["--no-cuda"], ["--device", "cpu"], ["--low-cpu-memory"], ["--no-low-cpu-memory"], ["--lazy-unpickle"],
    ["--no-lazy-unpickle"], ["--read-to-gpu"], ["--no-read-to-gpu"], ["--multi-gpu"], ["--no-multi-gpu"], ["-j", "2"],
    ["--num-threads", "2"], ["--gpu-rich"], ["--async-write"], ["--no-async-write"], ["--write-threads", "2"],
    ["--out-shard-size", "5B"], ["--copy-tokenizer"], ["--no-copy-tokenizer"], ["--clone-tensors"], ["--no-clone-tensors"],
    ["--write-model-card"], ["--no-write-model-card"], ["--safe-serialization"], ["--no-safe-serialization"],
]  # fmt: skip


@functools.lru_cache(maxsize=1)
def parser():
    return build_parser()


def parse(*flags: str):
    return parser().parse_args(["merge", "cfg.yml", "out", *flags])


@pytest.mark.parametrize("flags", MERGEKIT_YAML_FLAGS, ids=lambda f: " ".join(f))
def test_every_mergekit_yaml_flag_parses(flags):
    parse(*flags)


@pytest.mark.slow
def test_the_list_is_mergekit_yaml_s_own():
    """Against the installed mergekit-yaml's --help, where there is one (a reference only)."""
    exe = shutil.which("mergekit-yaml") or ("/tmp/mergekit-venv/bin/mergekit-yaml" if Path("/tmp/mergekit-venv/bin/mergekit-yaml").exists() else None)
    if exe is None:
        pytest.skip("mergekit-yaml is not installed")
    text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120).stdout
    theirs = {f for f in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", text) if f != "--help" and not f.endswith("-")}  # a flag cut by a line break
    ours = {f for flags in MERGEKIT_YAML_FLAGS for f in flags if f.startswith("-") and f != "-vv"}
    assert theirs <= ours, sorted(theirs - ours)


def test_flags_keep_mergekit_meanings():
    a = parse("--cuda", "-j", "3", "--random-seed", "11", "--out-shard-size", "2K", "--no-copy-tokenizer", "--no-write-model-card",
              "--unsafe-truncate-embeddings", "--quiet")  # fmt: skip
    assert (a.cuda, a.threads, a.seed, a.max_shard_size, a.copy_tokenizer, a.write_model_card, a.unsafe_truncate_embeddings,
            a.quiet) == (True, 3, 11, 2000, False, False, True, True)  # fmt: skip
    assert parse().max_shard_size == "5GB" and parse().copy_tokenizer and parse().write_model_card
    assert shard_size("5B") == 5 * 10**9 and shard_size("500M") == 5 * 10**8 and shard_size("1GiB") == 2**30


def test_no_op_flags_print_one_note_each(tiny_models, tmp_path, capsys):
    from mergekit_het.cli import main

    cfg = tmp_path / "cfg.yml"
    cfg.write_text(f"merge_method: linear\nmodels:\n  - model: {tiny_models['e0']}\n    parameters: {{weight: 1}}\n")
    rc = main(["merge", str(cfg), str(tmp_path / "out"), "--lazy-unpickle", "--clone-tensors", "--no-cuda", "--quiet",
               "--no-write-model-card", "--out-shard-size", "20K"])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if line.startswith("note:")]
    assert rc == 0 and len(notes) == 2 and "--lazy-unpickle" in notes[0] and "--clone-tensors" in notes[1]
    out = tmp_path / "out"
    assert not (out / "README.md").exists() and not (out / "mergekit_config.yml").exists()
    assert len(list(out.glob("*.safetensors"))) > 1  # 20K = 20,000 bytes per shard
