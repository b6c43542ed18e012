"""Recipes: one YAML file per model holds every number (sizes, bounds, channels, classes, names).

A recipe is a nested mapping with attribute access (`recipe.model.camera.vtransform.dbound`); reading a field that
is not there raises a RecipeError naming the dotted path. `load_recipe` validates the whole file up front (required
fields and the cross-field consistency the model relies on), so a bad recipe fails before anything is written.
`recipe_from_config` overlays an upstream torchpack training config on a recipe.

The core checks only what every recipe shares (names, graphs, quantization and runtime settings, their types); the
architecture's module (`bevport.pipelines.<architecture>.check_recipe`) checks its model section. Both sit on the
torch-free side, because the runtime image (no torch) loads recipes too.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from bevport.configchain import deep_merge, load_config_chain
from bevport.errors import RecipeError

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
# The recipe every command uses when none is named: the one place this name is written outside recipes/.
DEFAULT_RECIPE = "v2xfusion-pp-r34"


class Node(dict):
    """A read-only view of a recipe mapping with attribute access and dotted paths in its error messages."""

    def __init__(self, data: Dict[str, Any], path: str = "", origin: str = "recipe", trail: Optional[list] = None):
        super().__init__(data)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_origin", origin)
        # The dotted path last read anywhere in this recipe, shared by its views: names the field when a check meets
        # a value of a kind it does not expect.
        object.__setattr__(self, "_trail", trail if trail is not None else [""])

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self[key]

    def __getitem__(self, key: str) -> Any:
        try:
            value = super().__getitem__(key)
        except KeyError:
            raise RecipeError(f"{self._origin}: missing field `{self._dotted(key)}`",
                              f"add it to the recipe (see recipes/{DEFAULT_RECIPE}.yaml for the full layout)") from None
        self._trail[0] = self._dotted(key)
        if isinstance(value, dict):
            return Node(value, self._dotted(key), self._origin, self._trail)
        return value

    def __setattr__(self, key: str, value: Any) -> None:
        raise TypeError("recipes are read-only; build a new one with Recipe.updated()")

    def _dotted(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(dict(self))


class Recipe(Node):
    """A validated recipe. `origin` names the file (and config) it came from, for messages."""

    def __init__(self, data: Dict[str, Any], origin: str):
        super().__init__(data, "", origin)
        validate(self)

    def updated(self, overlay: Dict[str, Any], origin: Optional[str] = None) -> "Recipe":
        return Recipe(deep_merge(self.to_dict(), overlay), origin or self._origin)

    # Derived quantities: computed here once so no caller re-derives them.
    @property
    def bev_shape(self) -> List[int]:
        """[nx, ny] of the view transform's BEV grid (dim 2 = x forward, dim 3 = y left)."""
        vt = self.model.camera.vtransform
        return [cells(vt.xbound, self, "model.camera.vtransform.xbound"),
                cells(vt.ybound, self, "model.camera.vtransform.ybound")]

    @property
    def class_names(self) -> List[str]:
        return [name for task in self.model.head.tasks for name in task]


def cells(bound: Sequence[float], recipe: Optional[Node] = None, field: str = "bound") -> int:
    """Cells of a [min, max, step] bound; a span that overflows float64 is named as the recipe's `field`."""
    span = (bound[1] - bound[0]) / bound[2]
    if not math.isfinite(span):
        message = f"is {list(bound)}: no finite number of cells"
        if recipe is None:
            raise RecipeError(f"{field} {message}")
        check(False, recipe, field, message)
    return int(round(span))


def check(condition: bool, recipe: Node, field: str, message: str) -> None:
    """Raise a RecipeError naming the recipe file and the dotted field unless `condition` holds."""
    if not condition:
        raise RecipeError(f"{recipe._origin}: `{field}` {message}")


def check_indices(recipe: Node, field: str, values: Sequence[Any], count: int, what: str) -> None:
    """Every entry of `values` (read from `field`) indexes one of `count` `what`s: an integer in 0 .. count - 1."""
    check(all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < count for v in values), recipe, field,
          f"is {list(values)}; it must hold {what} indices 0-{count - 1}")


def check_number(recipe: Node, field: str, value: Any, minimum: Optional[float] = None, integer: bool = False,
                 exclusive: bool = False) -> None:
    """`value` (read from `field`) is a number (an integer if asked) at or above `minimum` (above, if exclusive)."""
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    check(ok and not isinstance(value, bool), recipe, field, f"must be {kind}, got {value!r}")
    if minimum is not None:
        bound = value > minimum if exclusive else value >= minimum
        check(bound, recipe, field, f"must be {'>' if exclusive else '>='} {minimum:g}, got {value!r}")


def field(recipe: Node, dotted: str) -> Any:
    """The value at a dotted path (`model.head.in_channels`); a missing field raises naming the path."""
    node: Any = recipe
    for key in dotted.split("."):
        node = node[key]
    return node


def check_numbers(recipe: Node, integers: Sequence[str] = (), numbers: Sequence[str] = (),
                  vectors: Optional[Dict[str, int]] = None) -> None:
    """Every listed field holds the right kind of value: `integers`, `numbers` (int or float), and `vectors`
    (dotted path -> length, 0 for any length) of numbers. Run before comparisons, so that a string where a number
    belongs is named by its path instead of failing somewhere as a TypeError."""
    for path in integers:
        check_number(recipe, path, field(recipe, path), integer=True)
    for path in numbers:
        check_number(recipe, path, field(recipe, path))
    for path, length in (vectors or {}).items():
        value = field(recipe, path)
        ok = isinstance(value, list) and (not length or len(value) == length) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        check(ok, recipe, path, f"must be a list of {length or 'some'} numbers, got {value!r}")


def _module_exists(package: str, name: str) -> bool:
    return isinstance(name, str) and name.isidentifier() and importlib.util.find_spec(f"{package}.{name}") is not None


def _known(package: str) -> str:
    folder = Path(__file__).resolve().parent / package.split(".", 1)[1]
    return ", ".join(sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")))


def validate(r: Recipe) -> None:
    """The schema every recipe shares, then the architecture's own checks of its model section."""
    check(isinstance(r.name, str) and r.name, r, "name", "must be a non-empty string")
    check(_module_exists("bevport.pipelines", r.architecture), r, "architecture",
          f"is {r.architecture!r}; bevport knows {_known('bevport.pipelines')}")
    check(_module_exists("bevport.formats", r.dataset.format), r, "dataset.format",
          f"is {r.dataset.format!r}; bevport reads {_known('bevport.formats')}")
    try:
        _validate_export(r)
        _validate_quantize(r)
        _validate_runtime(r)
        importlib.import_module(f"bevport.pipelines.{r.architecture}").check_recipe(r)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, ZeroDivisionError) as exc:
        # The checks above name the field for every value they read; this is the net for a value of a kind no
        # check expects (a mapping where a list belongs, ...), so that no traceback reaches the user.
        raise RecipeError(f"{r._origin}: `{r._trail[0]}` (or a value read with it) is of the wrong kind "
                          f"({type(exc).__name__}: {exc})",
                          f"compare the file with recipes/{DEFAULT_RECIPE}.yaml") from None


def tensor_names(outputs: Any) -> List[Any]:
    """Every tensor name of a graph's `outputs` entry: a list of names, per-task mappings, or {tensor, order}."""
    if isinstance(outputs, dict):
        return [outputs.get("tensor")]
    return [n for o in outputs for n in (o.values() if isinstance(o, dict) else [o])]


def _validate_export(r: Recipe) -> None:
    e = r.export
    check_number(r, "export.opset", e.opset, 13, integer=True)
    check_number(r, "export.parity.factor", e.parity.factor, 1)
    check_number(r, "export.parity.floor", e.parity.floor, 0, exclusive=True)
    check_number(r, "export.parity.box_tolerance", e.parity.box_tolerance, 0, exclusive=True)
    if "geometry_tolerance" in e.parity:
        check_number(r, "export.parity.geometry_tolerance", e.parity.geometry_tolerance, 0, exclusive=True)
    check(isinstance(e.graphs, dict) and e.graphs, r, "export.graphs", "must map graph keys to graphs")
    for key in e.graphs:
        graph = e.graphs[key]
        check(isinstance(graph, dict), r, f"export.graphs.{key}", "must map file, inputs and outputs")
        check(isinstance(graph.file, str) and graph.file, r, f"export.graphs.{key}.file", "must be a file name")
        check(isinstance(graph.inputs, list), r, f"export.graphs.{key}.inputs", "must list tensor names")
        check(isinstance(graph.outputs, (list, dict)), r, f"export.graphs.{key}.outputs",
              "must list tensor names (or per-task mappings, or {tensor, order} for a packed head)")
        names = list(graph.inputs) + tensor_names(graph.outputs)
        check(len(set(map(str, names))) == len(names) and all(isinstance(n, str) and n for n in names), r,
              f"export.graphs.{key}", f"tensor names must be non-empty and unique, got {names}")


def _validate_quantize(r: Recipe) -> None:
    q = r.quantize
    check_number(r, "quantize.calibration_frames", q.calibration_frames, 1, integer=True)
    check_number(r, "quantize.holdout_frames", q.holdout_frames, 1, integer=True)
    if q.subset_size is not None:
        check_number(r, "quantize.subset_size", q.subset_size, 1, integer=True)
    check(str(q.target_device).upper() in ("ANY", "CPU", "GPU", "NPU", "CPU_SPR"), r, "quantize.target_device",
          f"is {q.target_device}; NNCF knows ANY, CPU, GPU, NPU, CPU_SPR")
    check(str(q.preset).lower() in ("performance", "mixed"), r, "quantize.preset", "must be performance or mixed")
    check(isinstance(q.graphs, dict) and q.graphs, r, "quantize.graphs", "must map deploy graphs to INT8 IRs")
    for key in q.graphs:
        graph = q.graphs[key]
        check(isinstance(graph, dict), r, f"quantize.graphs.{key}", "must map ir (and source, precision ...)")
        check(key in r.export.graphs, r, f"quantize.graphs.{key}",
              f"names no export graph (export.graphs has {', '.join(r.export.graphs)})")
        source = graph.get("source", key)
        check(source in r.export.graphs, r, f"quantize.graphs.{key}.source",
              f"is {source}; must be one of the export graphs {', '.join(r.export.graphs)}")
        check(isinstance(graph.ir, str) and graph.ir, r, f"quantize.graphs.{key}.ir", "must be a file stem")
        check(graph.get("precision", "int8") in ("int8", "fp32"), r, f"quantize.graphs.{key}.precision",
              f"is {graph.get('precision')!r}; must be int8 (NNCF) or fp32 (kept FP32 under the INT8 IR's name)")
        for field_name, what in (("ignored_types", "OpenVINO op type names"),
                                 ("ignored_patterns", "regular expressions over node names")):
            ignored = graph.get(field_name) or []
            check(isinstance(ignored, list) and all(isinstance(t, str) for t in ignored), r,
                  f"quantize.graphs.{key}.{field_name}", f"must be a list of {what}")
        check(str(graph.get("preset", q.preset)).lower() in ("performance", "mixed"), r,
              f"quantize.graphs.{key}.preset", "must be performance or mixed")
        check(isinstance(graph.get("fast_bias_correction", False), bool), r,
              f"quantize.graphs.{key}.fast_bias_correction", "must be true or false")
    check_number(r, "quantize.report.min_snr_db", q.report.min_snr_db, 0, exclusive=True)
    check_number(r, "quantize.report.latency_runs", q.report.latency_runs, 1, integer=True)


def _validate_runtime(r: Recipe) -> None:
    v = r.runtime.validate
    check_number(r, "runtime.vis_score_threshold", r.runtime.vis_score_threshold, 0)
    for key in ("box_score_threshold", "match_distance_m", "min_matched_fraction"):
        check_number(r, f"runtime.validate.{key}", v[key], 0)
    snr = v.min_snr_db
    if isinstance(snr, dict):
        graphs = [g for g in r.quantize.graphs]
        check(set(snr) == set(graphs), r, "runtime.validate.min_snr_db",
              f"must be one number, or a number for each deploy graph ({', '.join(graphs)}), got {', '.join(snr)}")
        for graph in graphs:
            check_number(r, f"runtime.validate.min_snr_db.{graph}", snr[graph], 0)
    else:
        check_number(r, "runtime.validate.min_snr_db", snr, 0)


def _recipe_path(name_or_path: Union[str, os.PathLike]) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        return path
    candidate = RECIPE_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")))
        raise RecipeError(f"unknown recipe `{name_or_path}`", f"known recipes: {known}; or pass a path to a .yaml file")
    return candidate


def load_recipe(name_or_path: Union[str, os.PathLike], config: Optional[os.PathLike] = None) -> Recipe:
    """The recipe by name (recipes/<name>.yaml) or path, optionally overlaid with an upstream training config."""
    path = _recipe_path(name_or_path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    recipe = Recipe(data, str(path))
    if config is not None:
        recipe = recipe_from_config(config, recipe)
    return recipe


def recipe_from_config(config: os.PathLike, base: Recipe) -> Recipe:
    """`base` with every model number the upstream config chain at `config` sets."""
    architecture = importlib.import_module(f"bevport.pipelines.{base.architecture}")
    overlay = architecture.config_overlay(load_config_chain(config))
    return base.updated(overlay, origin=f"{base._origin} + {config}")
