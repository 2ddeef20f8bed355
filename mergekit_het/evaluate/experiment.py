"""A merge comparison: base, experts and merge methods on the same tasks, heads and splits.

Follows fusion_bench's model pool / method / task pool split: the pool is the base and one
expert per task (their encoders, held in memory), each method is merged in memory through
the engine (swept on the selection split when it has a grid), and the task pool scores every
model with each task's expert head. Reported per model: accuracy and macro-F1 per task,
absolute accuracy (mean over tasks) and normalized accuracy (mean of acc / expert acc);
optionally the cross-task matrix and the weight-disentanglement error of one task pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..merge.engine import merge_state_dicts
from ..methods import get_method
from ..models.encoder import load_tokenizer
from ..data.tasks import load_task_file
from .config import CompareConfig, MethodSpec
from .data import EncodedSplit, encode_split
from .interference import CrossTask, cross_task_matrix, disentanglement_grid
from .metrics import normalized_accuracy
from ..runtime.device import resolve_device
from .runner import MultiTaskModel, TaskScore, evaluate, load_model, predict, read_encoder
from .sweep import StateDict, SweepResult, sweep


@dataclass
class ModelResult:
    """Scores of one model on the report split; `params` are the merge parameters used."""

    name: str
    scores: dict[str, TaskScore]
    normalized: dict[str, float]
    params: dict = field(default_factory=dict)
    sweep: SweepResult | None = None

    @property
    def absolute(self) -> float:
        return sum(s.accuracy for s in self.scores.values()) / len(self.scores)

    @property
    def mean_normalized(self) -> float:
        return sum(self.normalized.values()) / len(self.normalized)


@dataclass
class Disentanglement:
    tasks: tuple[str, str]
    alphas: list[float]
    errors: list[list[float]]


@dataclass
class Comparison:
    tasks: list[str]
    select_split: str
    report_split: str
    base: ModelResult
    experts: ModelResult  # expert t on task t
    methods: list[ModelResult]
    cross_task: CrossTask | None = None
    disentanglement: Disentanglement | None = None


class _Bench:
    """The encoded splits and one model whose encoder weights get swapped per evaluation."""

    def __init__(self, cfg: CompareConfig) -> None:
        self.cfg, self.device = cfg, str(resolve_device(cfg.device, "device"))
        self.tasks = load_task_file(cfg.tasks, cfg.task_names)
        self.model: MultiTaskModel = load_model(cfg.base, self.tasks, cfg.experts)
        self.model.to(self.device)
        self.tokenizer = load_tokenizer(cfg.base)
        self.data = {s: self.encode(s, cfg.max_examples.get(s))
                     for s in dict.fromkeys([cfg.select_split, cfg.report_split])}

    def encode(self, split: str, max_examples: int | None) -> dict[str, EncodedSplit]:
        return {t.name: encode_split(t, split, self.tokenizer, batch_size=self.cfg.batch_size,
                                     max_length=self.cfg.max_length, max_examples=max_examples,
                                     seed=self.cfg.seed)
                for t in self.tasks}

    def scores(self, state: StateDict, split: str, tasks: list[str] | None = None) -> dict[str, TaskScore]:
        self.model.load_encoder_state(state)
        data = {t: d for t, d in self.data[split].items() if tasks is None or t in tasks}
        return evaluate(self.model, data, device=self.device, progress=False)


def _normalized(scores: Mapping[str, TaskScore], experts: Mapping[str, float]) -> dict[str, float]:
    return {t: s.accuracy / experts[t] for t, s in scores.items()}


def _run_method(bench: _Bench, spec: MethodSpec, base: StateDict, experts: list[StateDict],
                expert_select: dict[str, float], expert_report: dict[str, float]) -> ModelResult:
    cfg = bench.cfg
    tasks = list(expert_select)
    result = None
    method = get_method(spec.method)
    # data-aware methods read each expert's merge_stats.safetensors (`mergekit-het stats`)
    statistics = [cfg.experts[t] for t in tasks] if method.statistics else None
    # equal expert weights unless configured (task arithmetic sums τ_t; TIES weighs all alike)
    params = {"weight": 1.0} if "weight" in method.params else {}
    params.update(spec.parameters)
    if spec.grid:
        def score(state):
            acc = {t: s.accuracy for t, s in bench.scores(state, cfg.select_split).items()}
            return normalized_accuracy([acc[t] for t in tasks], [expert_select[t] for t in tasks]), acc

        result = sweep(spec.method, experts, base, spec.grid, score,
                       parameters=params, device=bench.device, statistics=statistics)
        params.update(result.best.params)
    merged = merge_state_dicts(spec.method, experts, base, params, device=bench.device, statistics=statistics)
    scores = bench.scores(merged, cfg.report_split)
    return ModelResult(spec.name, scores, _normalized(scores, expert_report), params, result)


def run_comparison(cfg: CompareConfig) -> Comparison:
    """Evaluate base, experts and every configured method (see the module docstring)."""
    bench = _Bench(cfg)
    tasks = [t.name for t in bench.tasks]
    base = bench.model.encoder_state()
    experts = {t: {k: v.detach().clone() for k, v in read_encoder(cfg.experts[t]).state_dict().items()}
               for t in tqdm(tasks, desc="loading experts", unit="model")}

    def expert_scores(split: str) -> dict[str, TaskScore]:
        return {t: bench.scores(experts[t], split, [t])[t] for t in tasks}

    expert_report = expert_scores(cfg.report_split)
    expert_report_acc = {t: s.accuracy for t, s in expert_report.items()}
    expert_select_acc = (expert_report_acc if cfg.select_split == cfg.report_split else
                         {t: s.accuracy for t, s in expert_scores(cfg.select_split).items()})
    base_scores = bench.scores(base, cfg.report_split)
    comparison = Comparison(
        tasks, cfg.select_split, cfg.report_split,
        base=ModelResult("base", base_scores, _normalized(base_scores, expert_report_acc)),
        experts=ModelResult("experts (each on its task)", expert_report,
                            _normalized(expert_report, expert_report_acc)),
        methods=[_run_method(bench, spec, base, list(experts.values()), expert_select_acc,
                             expert_report_acc) for spec in cfg.methods],
    )
    if cfg.cross_task is not None:
        comparison.cross_task = cross_task_matrix(
            base, experts, tasks,
            lambda sd: {t: s.accuracy for t, s in bench.scores(sd, cfg.report_split).items()},
            alpha=cfg.cross_task.alpha, device=bench.device)
    if cfg.disentanglement is not None:
        comparison.disentanglement = _disentanglement(bench, base, experts)
    return comparison


def _disentanglement(bench: _Bench, base: StateDict, experts: Mapping[str, StateDict]) -> Disentanglement:
    spec = bench.cfg.disentanglement
    data = bench.encode(bench.cfg.report_split, spec.max_examples)
    pair = spec.tasks

    def predict_on(state: StateDict, t: int) -> torch.Tensor:
        bench.model.load_encoder_state(state)
        return predict(bench.model.heads[pair[t]], data[pair[t]], device=bench.device, progress=False)

    errors = disentanglement_grid(base, (experts[pair[0]], experts[pair[1]]), spec.alphas,
                                  predict_on, device=bench.device)
    return Disentanglement(pair, list(spec.alphas), errors)
