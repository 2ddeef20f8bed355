"""`mergekit-het extract-lora --model FT --base-model BASE --output OUT` (or mergekit's `--out-path OUT`): a PEFT LoRA adapter from
a fine-tuned model and its base, with mergekit-extract-lora 0.1.5's flags (and their defaults)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_compat_flags, compat_given, device_name, positive_int

# mergekit's shared MergeOptions flags that mean nothing to this command: accepted, noted once.
# (flag names, takes a value)
_IGNORED: list[tuple[list[str], bool]] = [
    (["--lazy-unpickle", "--no-lazy-unpickle"], False),
    (["--low-cpu-memory", "--no-low-cpu-memory"], False),
    (["--read-to-gpu", "--no-read-to-gpu"], False),
    (["--multi-gpu", "--no-multi-gpu"], False),
    (["--async-write", "--no-async-write"], False),
    (["--write-threads"], True),
    (["--out-shard-size"], True),
    (["--copy-tokenizer", "--no-copy-tokenizer"], False),
    (["--clone-tensors", "--no-clone-tensors"], False),
    (["--safe-serialization", "--no-safe-serialization"], False),
    (["--allow-crimes", "--no-allow-crimes"], False),
    (["--unsafe-truncate-embeddings", "--no-unsafe-truncate-embeddings"], False),
    (["--transformers-cache"], True),
    (["--lora-merge-cache"], True),
    (["--lora-merge-dtype"], True),
    (["--random-seed"], True),
    (["-v"], False),
]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("extract-lora", help="extract a LoRA adapter from a fine-tuned model and its base",
                       description="Write a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) "
                                   "whose B·A is the truncated SVD of each weight's change W_ft − W_base.")  # fmt: skip
    p.add_argument("--model", required=True, help="fine-tuned model (folder, Hub id, or MODEL+ADAPTER)")
    p.add_argument("--base-model", "--base", dest="base_model", required=True, help="its base model")
    p.add_argument("--output", "--out-path", "--out", dest="out_path", type=Path, required=True,
                   help="adapter folder to write (--out-path, mergekit's name, and --out: accepted aliases)")
    p.add_argument("--max-rank", "--rank", "-r", dest="max_rank", type=positive_int, default=128, help="largest LoRA rank (default 128)")
    p.add_argument("--sv-epsilon", type=float, default=0.0,
                   help="also drop singular values ≤ this (default 0: keep max-rank of them)")  # fmt: skip
    p.add_argument("--distribute-scale", action=argparse.BooleanOptionalAction, default=True,
                   help="split √S between A and B (default); --no-distribute-scale puts S in A")  # fmt: skip
    p.add_argument("--embed-lora", action=argparse.BooleanOptionalAction, default=False,
                   help="decompose embeddings too (default: save them whole in modules_to_save)")  # fmt: skip
    p.add_argument("--save-module", action="append", default=[], metavar="NAME",
                   help="save this module (path or last name component) whole; repeatable")  # fmt: skip
    p.add_argument("-e", "--exclude-regex", action="append", default=[], metavar="REGEX", help="leave out modules matching it; repeatable")
    p.add_argument("-i", "--include-regex", action="append", default=[], metavar="REGEX",
                   help="only modules matching one of these; repeatable")  # fmt: skip
    p.add_argument("--skip-undecomposable", action="store_true", help="leave out norms and other non-linear modules instead of saving them whole")
    p.add_argument("--device", type=device_name, default=None, help="where the SVDs run: cpu, cuda, cuda:1, auto (default cpu)")
    p.add_argument("--cuda", action=argparse.BooleanOptionalAction, default=False, help="= --device cuda")
    p.add_argument("--gpu-rich", action="store_true", help="= --device cuda (mergekit's other parts of it do not apply)")
    p.add_argument("-j", "--num-threads", "--threads", dest="threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, default=False,
                   help="allow a custom architecture's code from the model folder")  # fmt: skip
    p.add_argument("--write-model-card", action=argparse.BooleanOptionalAction, default=True, help="write README.md (default on)")
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (can run code)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False, help="no progress bar")
    add_compat_flags(p, [(flag, value, "") for flags, value in _IGNORED for flag in flags],
                     "accepted for mergekit-extract-lora compatibility (no effect here)")  # fmt: skip
    return p


def run(args: argparse.Namespace) -> int:
    from ..lora.extract import ExtractOptions, extract_lora  # torch and transformers load only when used

    used = [flags[0] for flags, _ in _IGNORED if any(compat_given(args, flag) for flag in flags)]
    if used:
        print(f"note: {', '.join(used)} ha{'s' if len(used) == 1 else 've'} no effect on extract-lora", file=sys.stderr)
    device = args.device or ("cuda" if args.cuda or args.gpu_rich else "cpu")
    opts = ExtractOptions(
        max_rank=args.max_rank, sv_epsilon=args.sv_epsilon, distribute_scale=args.distribute_scale, embed_lora=args.embed_lora,
        save_modules=tuple(args.save_module), include=tuple(args.include_regex), exclude=tuple(args.exclude_regex),
        skip_undecomposable=args.skip_undecomposable, device=device, threads=args.threads, overwrite=args.overwrite,
        allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code, progress=not args.quiet,
        write_card=args.write_model_card,
    )  # fmt: skip
    print(extract_lora(args.model, args.base_model, args.out_path, opts))
    return 0
