"""`mergekit-het eval`: score model folders on tasks, or run a merge comparison from a config.

    mergekit-het eval MODEL [MODEL ...] --tasks eval/tasks/text_tasks.yaml [--split test]
        [--task-names a,b] [--heads TASK=EXPERT_DIR ...] [--output DIR] [--device auto]
    mergekit-het eval --config runs/quickstart/compare.yaml --output runs/quickstart/report2 [--set key=value ...]

The first form writes `eval_results.json` into every MODEL folder (skip with --no-results-file)
and, with --output (alias --out), results.json / report.md / accuracy.png there. The second form evaluates the
base, the experts and every configured merge method (swept on validation, reported on test).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path

from ..errors import ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate models on tasks / compare merge methods",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", metavar="MODEL", help="model folder(s) to evaluate")
    p.add_argument("--config", type=Path, help="comparison config (YAML); replaces MODEL/--tasks")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set max_examples.validation=500")
    p.add_argument("--tasks", type=Path, help="YAML task file")
    p.add_argument("--task-names", help="comma-separated subset of the file's tasks")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--heads", action="append", default=[], metavar="TASK=FOLDER",
                   help="take TASK's head from FOLDER (an expert) instead of the model folder")
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass (default 64)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example, longer ones truncated (default 128)")
    p.add_argument("--max-examples", type=int, help="random subset (seed 0) of each split")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--output", "--out", dest="out", type=Path,
                   help="folder for results.json, report.md and plots (--out: an accepted alias)")
    p.add_argument("--no-results-file", action="store_true",
                   help="do not write eval_results.json into the model folders")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        return _run_comparison(args)
    return _run_models(args)


def _run_comparison(args: argparse.Namespace) -> int:
    from ..evaluate.config import load_compare_config
    from ..evaluate.experiment import run_comparison
    from ..evaluate.report import comparison_markdown, write_comparison
    from ..runtime.files import check_output

    if args.models or args.tasks:
        raise ConfigError("--config replaces MODEL and --tasks; give one or the other")
    if args.out is None:
        raise ConfigError("--config needs --output DIR for the results")
    check_output(args.out, args.overwrite)
    cfg = load_compare_config(args.config, args.overrides)
    comparison = run_comparison(cfg)
    write_comparison(comparison, args.out, overwrite=args.overwrite)
    print(comparison_markdown(comparison))
    print(f"wrote {args.out}/results.json, report.md and plots")
    return 0


def _parse_heads(items: list[str]) -> dict[str, str]:
    heads = {}
    for item in items:
        task, sep, folder = item.partition("=")
        if not sep or not task or not folder:
            raise ConfigError(f"--heads '{item}' is not of the form TASK=FOLDER")
        heads[task] = folder
    return heads


def _load_with_heads(load_model, model: str, tasks, heads: dict[str, str]):  # noqa: ANN001, ANN202 (runner's types)
    """`load_model`, its "no head for task T" error ending with the flag that gives one."""
    try:
        return load_model(model, tasks, heads)
    except ConfigError as exc:
        task = re.match(r"no head for task '([^']+)'", str(exc))
        if task is None:
            raise
        raise ConfigError(f"{exc}: --heads {task[1]}=EXPERT_FOLDER") from None


def _run_models(args: argparse.Namespace) -> int:
    from ..evaluate import plots
    from ..evaluate.data import encode_split
    from ..runtime.device import resolve_device
    from ..runtime.files import check_output, staged_output
    from ..evaluate.report import scores_table
    from ..evaluate.runner import RESULTS_FILE, evaluate, load_model, write_eval_results
    from ..models.encoder import load_tokenizer, resolve_model
    from ..data.tasks import load_task_file

    if not args.models or args.tasks is None:
        raise ConfigError("give MODEL folder(s) and --tasks FILE, or --config FILE")
    names = args.task_names.split(",") if args.task_names else None
    tasks = load_task_file(args.tasks, names)
    for t in tasks:
        t.split_file(args.split)  # a missing split fails before any weight is read
    heads = _parse_heads(args.heads)
    for folder in [*args.models, *heads.values()]:
        resolve_model(folder)
    if not args.no_results_file and not args.overwrite:
        for m in args.models:
            if (Path(m) / RESULTS_FILE).exists():
                raise ConfigError(f"{Path(m) / RESULTS_FILE} already exists; pass --overwrite to replace it")
    if args.out is not None:
        check_output(args.out, args.overwrite)
    device = resolve_device(args.device, "--device")
    results = {}
    for m in args.models:
        model = _load_with_heads(load_model, m, tasks, heads)
        tok = load_tokenizer(m)
        data = {t.name: encode_split(t, args.split, tok, batch_size=args.batch_size,
                                     max_length=args.max_length, max_examples=args.max_examples)
                for t in tasks}
        results[m] = evaluate(model, data, device=device)
        if not args.no_results_file:
            write_eval_results(m, results[m], args.split, overwrite=args.overwrite)
    table = scores_table(results)
    print(f"split: {args.split}\n\n{table}")
    if args.out is not None:
        with staged_output(args.out, args.overwrite) as tmp:
            payload = {"split": args.split,
                       "models": {m: {t: asdict(s) for t, s in r.items()} for m, r in results.items()}}
            (tmp / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
            (tmp / "report.md").write_text(f"Split: `{args.split}`\n\n{table}")
            plots.plot_method_bars({m: {t: s.accuracy for t, s in r.items()} for m, r in results.items()},
                                   tmp / "accuracy.png", ylabel="accuracy", title=f"Accuracy ({args.split})")
        print(f"wrote {args.out}/results.json, report.md, accuracy.png")
    return 0
