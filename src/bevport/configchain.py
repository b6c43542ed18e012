"""Load an upstream torchpack config chain the way training did, without executing its contents.

torchpack's `Config.load(path, recursive=True)` loads every `default.yaml` from the top of the tree down to the
file's folder (root first), then the file itself, deep-merging each into the result: dicts merge key by key, while
lists and scalars (null included) replace. mmdet3d's `recursive_eval` then evaluates every `${...}` string as Python
with the whole config as globals. Here the expressions go through a small whitelisted AST evaluator instead of
`eval`: literals, names from the config, indexing/slicing, `a.b` as key access on mappings (torchpack configs allow
it), arithmetic, comparisons, conditionals and a few pure builtins — enough for the upstream configs, and nothing
that can reach the file system or import a module.
"""
from __future__ import annotations

import ast
import operator
import os
from pathlib import Path
from typing import Any, Dict, List

import yaml

from bevport.errors import RecipeError

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_FUNCTIONS = {
    "len": len, "int": int, "float": float, "round": round, "min": min, "max": max, "abs": abs, "sum": sum,
    "list": list, "tuple": tuple, "str": str, "bool": bool, "range": range,
}


def chain_files(path: Path) -> List[Path]:
    """The files torchpack merges for `path`, root first: each ancestor's default.yaml, then the file itself.

    torchpack walks up from the path as given; with the usual relative `configs/...` path that ends at the
    training repository. For an absolute path the walk stops at the outermost folder named `configs`, so a
    stray default.yaml higher up the file system is never merged in.
    """
    path = path.resolve()
    folders = [path.parent] + list(path.parent.parents)
    tops = [i for i, folder in enumerate(folders) if folder.name == "configs"]
    if tops:
        folders = folders[: tops[-1] + 1]
    files = []
    for folder in reversed(folders):
        for name in ("default.yaml", "default.yml"):
            if (folder / name).is_file():
                files.append(folder / name)
    if path not in files:
        files.append(path)
    return files


def deep_merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})",
                          "fix the file or point --config at the training config you used") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


class _Evaluator:
    """Evaluates `${...}` expressions against the merged config (names resolve lazily, cycles are reported)."""

    def __init__(self, config: Dict[str, Any], source: Path):
        self.config = config
        self.source = source
        self._resolving: List[str] = []
        self._resolved: Dict[str, Any] = {}

    def resolve_name(self, name: str) -> Any:
        if name in self._resolved:
            return self._resolved[name]
        if name in _FUNCTIONS:
            return _FUNCTIONS[name]
        if name not in self.config:
            raise RecipeError(f"{self.source}: expression refers to `{name}`, which no file of the config chain defines")
        if name in self._resolving:
            raise RecipeError(f"{self.source}: circular reference: {' -> '.join(self._resolving + [name])}")
        self._resolving.append(name)
        value = self.walk(self.config[name])
        self._resolving.pop()
        self._resolved[name] = value
        return value

    def walk(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: self.walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.walk(v) for v in obj]
        if isinstance(obj, str) and obj.startswith("${") and obj.endswith("}"):
            return self.walk(self.expression(obj[2:-1]))
        return obj

    def expression(self, text: str) -> Any:
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError:
            raise RecipeError(f"{self.source}: cannot parse expression `${{{text}}}`") from None
        return self._node(tree.body, text)

    def _node(self, node: ast.AST, text: str) -> Any:
        ev = lambda n: self._node(n, text)  # noqa: E731
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.resolve_name(node.id)
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(ev(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return {ev(k): ev(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BoolOp):
            values = [ev(v) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, right_node in zip(node.ops, node.comparators):
                right = ev(right_node)
                if type(op) not in _COMPARE or not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return ev(node.body) if ev(node.test) else ev(node.orelse)
        if isinstance(node, ast.Subscript):
            return ev(node.value)[self._index(node.slice, text)]
        if isinstance(node, ast.Attribute):      # torchpack's configs are dicts with attribute access
            value = ev(node.value)
            if isinstance(value, dict) and node.attr in value:
                return value[node.attr]
            raise RecipeError(f"{self.source}: expression `${{{text}}}` reads `.{node.attr}`, which is not a key of "
                              f"the mapping it is applied to")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS \
                and not node.keywords:
            return _FUNCTIONS[node.func.id](*[ev(a) for a in node.args])
        raise RecipeError(f"{self.source}: expression `${{{text}}}` uses `{type(node).__name__}`, which bevport does "
                          "not evaluate (only literals, config names, indexing, key access, arithmetic and len/int/float/min/max)")

    def _index(self, node: ast.AST, text: str) -> Any:
        if isinstance(node, ast.Slice):
            part = lambda n: None if n is None else self._node(n, text)  # noqa: E731
            return slice(part(node.lower), part(node.upper), part(node.step))
        if type(node).__name__ == "Index":  # Python 3.8 wraps subscripts in ast.Index
            return self._node(node.value, text)  # type: ignore[attr-defined]
        return self._node(node, text)


def load_config_chain(path: os.PathLike) -> Dict[str, Any]:
    """Merged and evaluated upstream config for `path` (a torchpack YAML file)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"config file not found: {path}",
                          "pass the training config, e.g. configs/V2X-I/det/centerhead/lssfpn/"
                          "camera+pointpillar/resnet34/default.yaml")
    merged: Dict[str, Any] = {}
    for file in chain_files(path):
        merged = deep_merge(merged, _read_yaml(file))
    return _Evaluator(merged, path).walk(merged)
