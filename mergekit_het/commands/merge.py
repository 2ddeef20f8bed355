"""`mergekit-het merge CONFIG OUT`: merge models as a mergekit YAML file describes (the model card
and side files are written by `run_merge`, as for every caller)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..merge.config import load_merge_config
from ..merge.engine import MergeOptions, run_merge
from .options import byte_size, device_name, non_negative_int, positive_int
from .push import add_hub_options, hub_options


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("merge", help="merge models described by a mergekit YAML config",
                       description="Merge models described by a mergekit-style YAML config into OUT.")  # fmt: skip
    p.add_argument("config", type=Path, help="mergekit YAML (models / base_model / merge_method / parameters / dtype)")
    p.add_argument("out", type=Path, help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only a model folder or one of our outputs)")
    p.add_argument("--overwrite-any", action="store_true", help="replace OUT if it exists, whatever it holds")
    p.add_argument("--device", type=device_name, default="cpu", help="where the arithmetic runs: cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch compute threads (default: torch's)")
    p.add_argument("--prefetch", type=non_negative_int, default=1,
                   help="pieces (tensors or chunks) read ahead, each by its own thread (default 1)")  # fmt: skip
    p.add_argument("--chunk-size", type=positive_int, default=None,
                   help="elements per chunk of large tensors (default: 512Ki per CPU thread up to 4Mi; 16Mi on cuda)")  # fmt: skip
    p.add_argument("--max-shard-size", type=byte_size, default="5GB", help="largest output shard, e.g. 5GB, 500MB (default 5GB)")
    p.add_argument("--allow-pickle", action="store_true", help="read pickle .bin checkpoints (can run code)")
    p.add_argument("--nan-policy", choices=["error", "warn", "ignore"], default="error",
                   help="what to do with NaN/Inf in inputs (default error)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of random methods (DARE, DELLA); per tensor")
    p.add_argument("--no-copy-tokenizer", action="store_true", help="copy only config files, not the tokenizer")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="upload OUT to this Hub model repository after merging")
    add_hub_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    cfg = load_merge_config(args.config)
    options = MergeOptions(
        device=args.device, threads=args.threads, prefetch=args.prefetch, chunk_size=args.chunk_size, max_shard_size=args.max_shard_size,
        overwrite="any" if args.overwrite_any else args.overwrite, allow_pickle=args.allow_pickle, nan_policy=args.nan_policy, seed=args.seed,
        copy_tokenizer=not args.no_copy_tokenizer, progress=not args.quiet,
    )  # fmt: skip
    summary = run_merge(cfg, args.out, options, config_text=args.config.read_text())
    print(summary)
    if args.push_to_hub:
        from ..hub.upload import push_folder  # the upload stack is imported only when used

        print(push_folder(args.out, args.push_to_hub, **hub_options(args)))
    return 0
