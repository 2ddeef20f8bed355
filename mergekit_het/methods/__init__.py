"""Merge methods: pure functions over tensors, registered by name (see `registry`)."""

from . import linear, model_stock, slerp, task_arithmetic, ties_paper  # noqa: F401  (register the methods)
from . import arcee_fusion, nearswap, passthrough, ram, sce, spherical  # noqa: F401  (mergekit 0.1.5 methods)
from . import data_aware, singular  # noqa: F401  (TSV-M, Iso-C, Iso-CTS; RegMean, Fisher)
from .registry import METHODS, Float32Copies, MergeMethod, ModelPass, Param, PerModel, get_method, merge_method

__all__ = ["METHODS", "Float32Copies", "MergeMethod", "ModelPass", "Param", "PerModel", "get_method", "merge_method"]
