"""Merge methods: pure functions over tensors, registered by name (see `registry`)."""

from . import linear, model_stock, slerp, task_arithmetic  # noqa: F401  (register the methods)
from .registry import METHODS, MergeMethod, Param, PerModel, get_method, merge_method

__all__ = ["METHODS", "MergeMethod", "Param", "PerModel", "get_method", "merge_method"]
