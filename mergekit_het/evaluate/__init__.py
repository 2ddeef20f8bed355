"""Evaluation: per-task accuracy / macro-F1, normalized accuracy, cross-task matrix,
weight disentanglement, sweeps of merge parameters, reports and plots (see docs/eval.md).

Modules: `metrics` (pure functions), `data` (tokenized splits), `runner` (model + per-task heads,
prediction, eval_results.json), `sweep`, `interference`, `experiment` (comparison), `config`,
`report`, `plots`.
"""
