"""YAML config files read within bounds: size, encoding, alias expansion, nesting.

A 1 KB YAML of nested aliases ("billion laughs") expands to millions of values once anything
walks it (pydantic, an error message); a 50 MB file takes minutes to parse. Configs of this
project are a few KB, so `load_yaml` refuses a file over `MAX_CONFIG_BYTES`, text that is not
UTF-8, a document whose values, counted with every alias expanded, pass `MAX_NODES`, and
nesting deeper than `MAX_DEPTH`. Anchors and aliases used the ordinary way (a model path
repeated) stay allowed: only their expanded size is bounded. Every failure is a `ConfigError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

MAX_CONFIG_BYTES = 2**20  # mergekit configs are a few KB
MAX_NODES = 100_000  # scalars, sequences and mappings, aliases expanded
MAX_DEPTH = 64


def load_yaml(path: Path, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """The YAML document in `path`, bounded as the module docstring says."""
    with open(path, "rb") as f:
        blob = f.read(max_bytes + 1)
    if len(blob) > max_bytes:
        raise ConfigError(f"{path}: larger than {max_bytes} bytes; a config file is a few KB")
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> Any:
    """Compose `text` (PyYAML's safe schema), bound its expanded size and depth, then construct."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML{at}: {problem[:200]}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def _check_size(root: yaml.Node, where: str) -> None:
    """Expanded node count of the graph (each alias counted as a full copy of its target),
    computed once per distinct node, so the check itself is linear in the file's size."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        if id(node) in sizes and not done:
            continue
        kids = _children(node)
        if done:
            sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(sizes.get(id(k), 0) for k in kids))
            continue
        sizes[id(node)] = 0  # a cycle (a recursive alias) counts as nothing more
        stack.append((node, depth, True))
        stack.extend((k, depth + 1, False) for k in kids if id(k) not in sizes)
    if sizes[id(root)] > MAX_NODES:
        raise ConfigError(f"{where}: expands to more than {MAX_NODES} values (nested YAML aliases?)")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
