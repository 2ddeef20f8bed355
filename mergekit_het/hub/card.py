"""Model cards (`README.md`) for merges and fine-tuned experts, built on `huggingface_hub.ModelCard`.

A card is YAML front matter (`base_model`, `library_name`, `tags`, `license`, and `model-index`
from evaluation results via `ModelCardData(eval_results=...)`) plus a markdown body. The
evaluation section is always the last one and starts with `EVAL_MARKER`, so that
`refresh_eval_results` can replace it after `mergekit-het eval` writes `eval_results.json`.

Evaluation results file (`eval_results.json` in the model folder), missing keys tolerated:
`{"tasks": {"<task>": {"accuracy": 0.91, "macro_f1": 0.88, ...}, ...}, "split": "test", ...}`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData, metadata_load

from ..errors import MergekitHetError

CARD_FILE = "README.md"
EVAL_FILE = "eval_results.json"
EXPERT_FILE = "expert.json"
PROJECT_TAG = "mergekit-het"
PROJECT_URL = "https://github.com/mergekit-het/mergekit-het"
EVAL_MARKER = "<!-- mergekit-het:evaluation -->"

# metric key in eval_results.json -> (model-index metric type, metric config, display name)
_METRICS: dict[str, tuple[str, str | None, str]] = {
    "accuracy": ("accuracy", None, "Accuracy"),
    "macro_f1": ("f1", "macro", "Macro F1"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(ref: str) -> str | None:
    """`ref` if it names a Hub repository (`owner/name`, not an existing local folder), else None."""
    return ref if _HUB_ID.match(ref) and not Path(ref).exists() else None


def read_license(ref: str | None) -> str | None:
    """License of a local model folder: its README front matter, else `license` in config.json."""
    if ref is None or not Path(ref).is_dir():
        return None
    readme, config = Path(ref) / CARD_FILE, Path(ref) / "config.json"
    try:
        meta = metadata_load(readme) if readme.is_file() else None
    except (yaml.YAMLError, ValueError):  # someone else's broken card must not stop a merge
        meta = None
    found = (meta or {}).get("license")
    if found is None and config.is_file():
        try:
            found = json.loads(config.read_text()).get("license")
        except (json.JSONDecodeError, AttributeError):
            found = None
    return found if isinstance(found, str) else None


def _shared_license(refs: list[str]) -> str | None:
    """The license all `refs` declare, or None when one is unknown or they disagree."""
    found = {read_license(ref) for ref in refs}
    return found.pop() if len(found) == 1 else None


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; a one-line error when it is not valid JSON or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise MergekitHetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise MergekitHetError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_eval_results(folder: Path) -> dict | None:
    """Parsed `folder/eval_results.json`, or None when the file is absent."""
    path = Path(folder) / EVAL_FILE
    return read_json_object(path) if path.is_file() else None


def _task_metrics(eval_results: dict | None) -> dict[str, dict[str, int | float]]:
    """{task: {metric: value}} keeping only numeric metrics; anything malformed is skipped."""
    tasks = (eval_results or {}).get("tasks")
    if not isinstance(tasks, dict):
        return {}
    out = {}
    for task, metrics in tasks.items():
        if isinstance(metrics, dict):
            nums = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if nums:
                out[str(task)] = nums
    return out


def _eval_entries(eval_results: dict | None) -> list[EvalResult]:
    """Hub `model-index` entries: one per (task, known metric)."""
    split = (eval_results or {}).get("split")
    return [
        EvalResult(
            task_type="text-classification",
            dataset_type=task,
            dataset_name=task,
            dataset_split=split if isinstance(split, str) else None,
            metric_type=_METRICS[key][0],
            metric_config=_METRICS[key][1],
            metric_name=_METRICS[key][2],
            metric_value=value,
        )
        for task, metrics in _task_metrics(eval_results).items()
        for key, value in metrics.items()
        if key in _METRICS
    ]


def _cell(value: int | float | None) -> str:
    return "–" if value is None else str(value) if isinstance(value, int) else f"{value:.4f}"


def _eval_section(eval_results: dict | None) -> str:
    """Markdown table of every numeric metric per task ('' when there is nothing to show)."""
    table = _task_metrics(eval_results)
    if not table:
        return ""
    names = sorted({m for metrics in table.values() for m in metrics}, key=lambda m: (m not in _METRICS, m))
    head = "| task | " + " | ".join(_METRICS[m][2] if m in _METRICS else m for m in names) + " |"
    rows = [
        f"| {task} | " + " | ".join(_cell(metrics.get(m)) for m in names) + " |"
        for task, metrics in table.items()
    ]
    return "\n".join([EVAL_MARKER, "## Evaluation", "", "Results from `mergekit-het eval`.", "", head,
                      "|" + " --- |" * (len(names) + 1), *rows, ""])


def _link(ref: str) -> str:
    return f"[{ref}](https://huggingface.co/{ref})" if hub_id(ref) else f"`{ref}`"


def _render(data: ModelCardData, body: str, eval_results: dict | None, name: str) -> str:
    """Card text; parsing it back with `ModelCard` checks the front matter (model-index included)."""
    entries = _eval_entries(eval_results)
    if entries:
        data.eval_results, data.model_name = entries, data.model_name or name
    section = _eval_section(eval_results)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n" + (f"\n{section}" if section else "")))


def _write_card(out_dir: Path, text: str) -> Path:
    """Write out_dir/README.md atomically (temporary file, then rename)."""
    path, tmp = Path(out_dir) / CARD_FILE, Path(out_dir) / f".{CARD_FILE}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _params_text(params: Any) -> str:
    if not isinstance(params, dict) or not params:
        return ""
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items())


MAX_CONFIG_CHARS = 10_000
"""The most of the merge config copied into a card: a longer text (a huge comment, a pasted
blob) is replaced by the config re-dumped without comments, cut to this many characters."""


def _bounded_config(config_yaml: str, config: dict) -> str:
    """The config text for the card: verbatim when short, else `config` as YAML (no comments),
    cut to `MAX_CONFIG_CHARS` with a note saying where the whole text is."""
    if len(config_yaml) <= MAX_CONFIG_CHARS:
        return config_yaml
    text = yaml.safe_dump(config, sort_keys=False) if config else config_yaml
    if len(text) > MAX_CONFIG_CHARS:
        text = text[:MAX_CONFIG_CHARS].rsplit("\n", 1)[0] + "\n# ... (cut; the whole config is in mergekit_config.yml)\n"
    return text


def write_merge_card(
    out_dir: Path,
    config_yaml: str,
    config: dict,
    base_model: str | None,
    models: list[str],
    method: str,
    eval_results: dict | None = None,
    title: str | None = None,
) -> Path:
    """Write `out_dir/README.md` for a merge: front matter, method and parameters, inputs, the
    config (verbatim up to `MAX_CONFIG_CHARS`), and evaluation results (`eval_results`, else
    `out_dir/eval_results.json`). `title` (default: the folder's name) heads the card: the
    output's name when the card is written in a staging folder."""
    out_dir = Path(out_dir)
    title = title or out_dir.name
    config_yaml = _bounded_config(config_yaml, config)
    eval_results = eval_results if eval_results is not None else load_eval_results(out_dir)
    inputs = list(dict.fromkeys(([base_model] if base_model else []) + list(models)))
    ids = [r for r in inputs if hub_id(r)]
    data = ModelCardData(
        base_model=ids or None,
        library_name="transformers",
        license=_shared_license([base_model] if base_model else models),
        tags=["merge", PROJECT_TAG, method],
    )
    per_model = {
        str(entry.get("model")): entry.get("parameters")
        for entry in config.get("models") or []
        if isinstance(entry, dict)
    }
    lines = [
        f"# {title}",
        "",
        f"This model is a merge of {len(models)} models made with [mergekit-het]({PROJECT_URL}) "
        f"using the `{method}` merge method" + (f", with {_link(base_model)} as the base." if base_model else "."),
        "",
        "## Merge method",
        "",
        f"Method: `{method}`.",
    ]
    if params := _params_text(config.get("parameters")):
        lines += ["", f"Parameters: {params}."]
    lines += ["", "## Models merged", ""]
    if base_model:
        lines.append(f"- {_link(base_model)} (base)")
    lines += [f"- {_link(m)}" + (f": {p}" if (p := _params_text(per_model.get(m))) else "") for m in models]
    runs = [len(r) for r in re.findall(r"`{3,}", config_yaml)]
    fence = "`" * max([3, *[n + 1 for n in runs]])  # a fence the verbatim YAML cannot close
    lines += ["", "## Configuration", "", f"{fence}yaml", config_yaml.rstrip("\n"), fence]
    return _write_card(out_dir, _render(data, "\n".join(lines), eval_results, title))


def write_expert_card(out_dir: Path, expert_json: dict, eval_results: dict | None = None) -> Path:
    """Write `out_dir/README.md` for an expert fine-tuned by mergekit-het, from its expert.json
    (base_model, mode, task, steps, sparsity, seed, metrics; any may be missing)."""
    out_dir = Path(out_dir)
    base, task, mode = (expert_json.get(k) for k in ("base_model", "task", "mode"))
    base = base if isinstance(base, str) else None
    metrics = expert_json.get("metrics")
    if eval_results is None:
        eval_results = load_eval_results(out_dir)
    if eval_results is None and isinstance(metrics, dict) and task:
        eval_results = {"tasks": {str(task): metrics}}
    data = ModelCardData(
        base_model=hub_id(base) if base else None,
        library_name="transformers",
        license=read_license(base),
        tags=[PROJECT_TAG, "expert", *([str(mode)] if mode else []), *([str(task)] if task else [])],
        pipeline_tag="text-classification" if task else None,
    )
    title = f"{task} expert" if task else "mergekit-het expert"
    settings = {k: v for k, v in expert_json.items() if k != "metrics" and isinstance(v, (str, int, float, bool))}
    lines = [
        f"# {out_dir.name}: {title}",
        "",
        f"A task expert fine-tuned with [mergekit-het]({PROJECT_URL})"
        + (f" from {_link(base)}" if base else "")
        + (f" on the `{task}` task" if task else "")
        + (f" ({mode})." if mode else "."),
        "",
        "## Training",
        "",
        "| setting | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in settings.items()],
    ]
    return _write_card(out_dir, _render(data, "\n".join(lines), eval_results, out_dir.name))


def refresh_eval_results(folder: Path, eval_results: dict, *, write: bool = True) -> bool:
    """Replace the evaluation section and `model-index` of a mergekit-het card by `eval_results`.
    Cards not written by mergekit-het are left alone. Returns whether the card changes."""
    path = Path(folder) / CARD_FILE
    card = ModelCard.load(path)
    if PROJECT_TAG not in (card.data.tags or []):
        return False
    card.data.eval_results = None
    text = _render(card.data, card.text.split(EVAL_MARKER)[0], eval_results, Path(folder).name)
    if text == path.read_text(encoding="utf-8"):
        return False
    if write:
        _write_card(Path(folder), text)
    return True
