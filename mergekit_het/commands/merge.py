"""`mergekit-het merge CONFIG OUT` (or `--output OUT`): merge models as a mergekit YAML file describes (the model card
and side files are written by `run_merge`, as for every caller).

Every flag of mergekit-yaml 0.1.5 is accepted with the same meaning, so `mergekit-het merge` can
replace `mergekit-yaml` in a script unchanged: `--cuda`, `--gpu-rich`, `-j/--num-threads`,
`--random-seed`, `--out-shard-size` (mergekit's sizes: 5B = 5·10⁹ bytes), `--copy-tokenizer`,
`--write-model-card`, `--unsafe-truncate-embeddings`, `--transformers-cache`, `--quiet` act as ours do; the
flags that mean nothing for this engine (it streams, reads to pinned memory, always writes
safetensors, runs no model code) are accepted with a one-line note each.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from .options import Compat, add_compat_flags, byte_size, compat_notes, device_name, non_negative_int, positive_int, shard_size
from .push import add_hub_options, hub_options

_STREAMS = "memory is one tensor group at a time whatever this says"
COMPAT: Compat = [
    ("--allow-crimes", False, "models merge whenever their tensor names and shapes agree, whatever their architectures"),
    ("--trust-remote-code", False, "no model code is ever run (configs and tensors are read as data)"),
    ("--lazy-unpickle", False, "pickle checkpoints are read only with --allow-pickle, lazily"),
    ("--lora-merge-cache", True, "LoRA references are applied in memory, tensor by tensor"),
    ("--lora-merge-dtype", True, "LoRA products are computed in float32 and cast with the model"),
    ("--low-cpu-memory", False, _STREAMS),
    ("--read-to-gpu", False, "inputs are read to pinned host memory and copied per piece"),
    ("--multi-gpu", False, "one device merges; use --device cuda:N"),
    ("--async-write", False, "writes are always asynchronous (one writer thread)"),
    ("--write-threads", True, "writes are always asynchronous (one writer thread)"),
    ("--clone-tensors", False, "every output tensor is written from its own buffer (a reused layer needs no clone)"),
    ("--no-safe-serialization", False, "outputs are always safetensors"),
]
_QUIET_NO_OPS = ["--no-cuda", "--no-lazy-unpickle", "--no-low-cpu-memory", "--no-read-to-gpu", "--no-multi-gpu",
                 "--no-async-write", "--no-clone-tensors", "--safe-serialization", "--no-trust-remote-code", "--no-allow-crimes"]  # fmt: skip

OMP_WAIT_POLICY = "PASSIVE"
"""Idle OpenMP threads sleep instead of spinning, unless the environment says otherwise: the
engine's reader and writer threads need the cores that spinning threads burn (a 1.1B passthrough
stack on 2 cores: 3.8 instead of 5.5-6.4 s of user CPU, 4.3-4.5 instead of 4.5-5.2 s; a TIES
merge of 4 × 70M bf16: 3.96-5.38 s passive, 4.65-5.15 s spinning)."""
QUICK_EXIT = True  # the console script skips the interpreter's teardown after a merge (cli.entry)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("merge", help="merge models described by a mergekit YAML config",
                       description="Merge models described by a mergekit-style YAML config into OUT "
                                   "(mergekit-yaml's flags are accepted too).")  # fmt: skip
    p.add_argument("config", type=Path, help="mergekit YAML (models or slices / base_model / merge_method / parameters / dtype)")
    p.add_argument("out", type=Path, nargs="?", default=None, help="output folder (written atomically), as mergekit-yaml's OUT")
    p.add_argument("--output", type=Path, default=None, help="the output folder, instead of the positional OUT")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only a model folder or one of our outputs)")
    p.add_argument("--overwrite-any", action="store_true", help="replace OUT if it exists, whatever it holds")
    p.add_argument("--device", type=device_name, default=None, help="where the arithmetic runs: cpu, cuda, cuda:1, auto (default cpu)")
    p.add_argument("--cuda", action="store_true", help="= --device cuda (mergekit)")
    p.add_argument("--gpu-rich", action="store_true", help="= --device cuda (mergekit; its other parts do not apply)")
    p.add_argument("--threads", "-j", "--num-threads", dest="threads", type=positive_int, default=None,
                   help="torch compute threads (default: torch's)")  # fmt: skip
    p.add_argument("--prefetch", type=non_negative_int, default=1,
                   help="pieces (tensors or chunks) read ahead, each by its own thread (default 1)")  # fmt: skip
    p.add_argument("--chunk-size", type=positive_int, default=None,
                   help="elements per chunk of large tensors (default: 512Ki per CPU thread up to 4Mi; 16Mi on cuda)")  # fmt: skip
    p.add_argument("--max-shard-size", type=byte_size, default="5GB", help="largest output shard, e.g. 5GB, 500MB (default 5GB)")
    p.add_argument("--out-shard-size", dest="max_shard_size", type=shard_size,
                   help="mergekit's form: bytes, K/M/B = 10^3/10^6/10^9 (5B = 5 GB)")  # fmt: skip
    p.add_argument("--arithmetic", choices=["float32", "config-dtype"], default="float32",
                   help="float32 (default), or the config's dtype with mergekit 0.1.5's casts (bf16 outputs equal its bit for bit)")  # fmt: skip
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (can run code)")
    p.add_argument("--nan-policy", choices=["error", "warn", "ignore"], default="error",
                   help="what to do with NaN/Inf in inputs (default error)")  # fmt: skip
    p.add_argument("--seed", "--random-seed", dest="seed", type=int, default=0, help="seed of random methods (DARE, DELLA); per tensor")
    p.add_argument("--copy-tokenizer", action=argparse.BooleanOptionalAction, default=True,
                   help="copy the tokenizer beside the config files (default on)")  # fmt: skip
    p.add_argument("--write-model-card", action=argparse.BooleanOptionalAction, default=True,
                   help="write README.md and mergekit_config.yml (default on)")  # fmt: skip
    p.add_argument("--unsafe-truncate-embeddings", action=argparse.BooleanOptionalAction, default=False,
                   help="vocabularies of different sizes: keep every model's first rows (assumes the same token ids)")  # fmt: skip
    p.add_argument("--transformers-cache", metavar="PATH", help="Hub download cache for model ids (HF_HUB_CACHE)")
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction, default=False, help="no progress bar")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload OUT to this Hub model repository after merging")
    add_hub_options(p)
    compat = add_compat_flags(p, COMPAT + [(flag, False, "") for flag in _QUIET_NO_OPS], "accepted for mergekit-yaml compatibility")
    compat.add_argument("-v", dest="compat_v", action="count", default=None, help=argparse.SUPPRESS)  # mergekit's repeatable -v
    return p


def run(args: argparse.Namespace) -> int:
    from ..merge.config import load_merge_config  # torch loads only when a command runs (fast --help)
    from ..merge.engine import MergeOptions, run_merge

    for note in compat_notes(args, COMPAT + [("-v", False, "the summary line is all there is to log")]):
        print(note, file=sys.stderr)
    if args.transformers_cache:
        os.environ["HF_HUB_CACHE"] = str(Path(args.transformers_cache).expanduser())
    if (args.out is None) == (args.output is None):
        raise ConfigError("give the output folder once: merge CONFIG OUT, or merge CONFIG --output OUT")
    args.out = args.out or args.output
    cfg = load_merge_config(args.config)
    options = MergeOptions(
        device=args.device or ("cuda" if args.cuda or args.gpu_rich else "cpu"), threads=args.threads, prefetch=args.prefetch,
        chunk_size=args.chunk_size, max_shard_size=args.max_shard_size, overwrite="any" if args.overwrite_any else args.overwrite,
        allow_pickle=args.allow_pickle, nan_policy=args.nan_policy, seed=args.seed, copy_tokenizer=args.copy_tokenizer,
        progress=not args.quiet, unsafe_truncate_embeddings=args.unsafe_truncate_embeddings, write_card=args.write_model_card,
        arithmetic=args.arithmetic,
    )  # fmt: skip
    summary = run_merge(cfg, args.out, options, config_text=args.config.read_text())
    print(summary)
    if args.push_to_hub:
        from ..hub.upload import push_folder  # the upload stack is imported only when used

        print(push_folder(args.out, args.push_to_hub, **hub_options(args)))
    return 0
