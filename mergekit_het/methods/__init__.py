"""Merge methods: pure functions over tensors, registered by name (see `registry`)."""

from . import linear, model_stock, slerp, task_arithmetic, ties_paper  # noqa: F401  (register the methods)
from .registry import METHODS, Float32Copies, MergeMethod, ModelPass, Param, PerModel, get_method, merge_method

__all__ = ["METHODS", "Float32Copies", "MergeMethod", "ModelPass", "Param", "PerModel", "get_method", "merge_method"]
