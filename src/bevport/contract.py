"""The deploy contract of a recipe: for every graph its file name and the name, shape and dtype of each port.

Export, quantization, runtime and tests all read this one object; no tensor name or shape is written anywhere else.
The architecture's pipeline module (`bevport.pipelines.<architecture>.graph_specs`) says what each graph's ports
hold; the recipe names them. Shapes use a string for a dynamic axis ("V").

A CenterHead's outputs are described by `HeadSlice`s: which channels of which tensor hold task t's attribute. A head
may export one tensor per task attribute (V2XFusion: `score`, `reg`, ... `vel2`) or one tensor with the tasks'
attributes concatenated along channels (`{tensor: name, order: [attributes]}` in the recipe).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

from bevport.errors import RecipeError

Dim = Union[int, str]


@dataclass(frozen=True)
class HeadSlice:
    """Channels [start, stop) of a head tensor hold attribute `attr` (heatmap, reg, ...) of task `task`."""
    task: int
    attr: str
    start: int
    stop: int


@dataclass(frozen=True)
class Port:
    """What an architecture says about one port before the recipe names it."""
    shape: Tuple[Dim, ...]
    dtype: str = "float32"
    # Declared shape vs. memory layout: the V2X camera feature is declared NCHW but laid out NHWC (contract §1.2).
    layout: Optional[str] = None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[Dim, ...]
    dtype: str = "float32"
    layout: Optional[str] = None
    # For head outputs: the task attributes this tensor carries, so decoding never matches on names.
    slices: Tuple[HeadSlice, ...] = ()

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def concrete_shape(self, dynamic: int) -> Tuple[int, ...]:
        return tuple(d if isinstance(d, int) else dynamic for d in self.shape)


@dataclass(frozen=True)
class GraphSpec:
    key: str
    file: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    @property
    def is_static(self) -> bool:
        return all(t.is_static for t in self.inputs + self.outputs)


@dataclass(frozen=True)
class Contract:
    recipe_name: str
    graphs: Dict[str, GraphSpec] = field(default_factory=dict)

    def __getitem__(self, key: str) -> GraphSpec:
        return self.graphs[key]

    def __iter__(self):
        return iter(self.graphs.values())

    def head_layout(self) -> List[Dict[str, Tuple[str, int, int]]]:
        """Per task: attribute -> (tensor name, first channel, end channel), over every graph's outputs."""
        tasks: Dict[int, Dict[str, Tuple[str, int, int]]] = {}
        for spec in self:
            for t in spec.outputs:
                for s in t.slices:
                    tasks.setdefault(s.task, {})[s.attr] = (t.name, s.start, s.stop)
        return [tasks[i] for i in sorted(tasks)]


def architecture(recipe):
    """The torch-free module of the recipe's architecture: `bevport.pipelines.<architecture>`."""
    return importlib.import_module(f"bevport.pipelines.{recipe.architecture}")


def build_contract(recipe) -> Contract:
    specs = architecture(recipe).graph_specs(recipe)
    declared = list(recipe.export.graphs)
    if list(specs) != declared:
        raise RecipeError(f"{recipe._origin}: `export.graphs` declares {declared}; the {recipe.architecture} "
                          f"architecture exports {list(specs)}")
    for key, q in recipe.quantize.graphs.items():
        source = specs[q.get("source", key)]
        if not source.is_static:
            raise RecipeError(f"{recipe._origin}: `quantize.graphs.{key}.source` is `{source.key}`, which has a "
                              "dynamic dimension; quantize from a static graph")
    return Contract(recipe.name, specs)


def graph_file(recipe, key: str) -> str:
    """The graph's file name; `{name}` fields are filled from the recipe's export section (lidar_pfe_v{static_voxels})."""
    scalars = {k: v for k, v in recipe.export.items() if isinstance(v, (int, float, str))}
    return recipe.export.graphs[key].file.format(**scalars)


def named(recipe, key: str, side: str, ports: Sequence[Port]) -> Tuple[TensorSpec, ...]:
    """The recipe's tensor names for one side ("inputs" / "outputs") of graph `key`, zipped with the ports."""
    names = list(recipe.export.graphs[key][side])
    if len(names) != len(ports):
        raise RecipeError(f"{recipe._origin}: `export.graphs.{key}.{side}` names {len(names)} tensors ({names}); "
                          f"the {recipe.architecture} architecture's {key} graph has {len(ports)}")
    return tuple(TensorSpec(n, tuple(p.shape), p.dtype, p.layout) for n, p in zip(names, ports))


def graph(recipe, key: str, inputs: Sequence[Port], outputs: Sequence[Port]) -> GraphSpec:
    return GraphSpec(key, graph_file(recipe, key), named(recipe, key, "inputs", inputs),
                     named(recipe, key, "outputs", outputs))


def head_channels(recipe, task: int, attr: str) -> int:
    head = recipe.model.head
    return len(head.tasks[task]) if attr == "heatmap" else int(head.common_heads[attr][0])


def center_head_outputs(recipe, key: str, grid: Sequence[int]) -> Tuple[TensorSpec, ...]:
    """A CenterHead graph's output tensors, [1, C, X, Y] each, in either of the recipe's two layouts."""
    outputs = recipe.export.graphs[key].outputs
    attrs = list(recipe.model.head.common_heads) + ["heatmap"]
    field_name = f"export.graphs.{key}.outputs"
    if isinstance(outputs, dict):                  # one tensor, tasks' attributes concatenated along channels
        order = list(outputs.get("order") or [])
        if sorted(order) != sorted(attrs) or not isinstance(outputs.get("tensor"), str):
            raise RecipeError(f"{recipe._origin}: `{field_name}` must be {{tensor: name, order: {attrs} in channel "
                              f"order}}, got {dict(outputs)}")
        slices, start = [], 0
        for t in range(len(recipe.model.head.tasks)):
            for attr in order:
                stop = start + head_channels(recipe, t, attr)
                slices.append(HeadSlice(t, attr, start, stop))
                start = stop
        return (TensorSpec(outputs["tensor"], (1, start) + tuple(grid), slices=tuple(slices)),)
    if len(outputs) != len(recipe.model.head.tasks):
        raise RecipeError(f"{recipe._origin}: `{field_name}` needs one mapping per task "
                          f"({len(recipe.model.head.tasks)})")
    specs = []
    for t, mapping in enumerate(outputs):       # one tensor per task attribute
        if not isinstance(mapping, dict) or sorted(mapping) != sorted(attrs):
            raise RecipeError(f"{recipe._origin}: `{field_name}[{t}]` maps {sorted(mapping)} but task {t} has "
                              f"heads {sorted(attrs)}")
        for attr, name in mapping.items():
            c = head_channels(recipe, t, attr)
            specs.append(TensorSpec(name, (1, c) + tuple(grid), slices=(HeadSlice(t, attr, 0, c),)))
    return tuple(specs)


def center_head_graph(recipe, key: str, inputs: Sequence[Port], grid: Sequence[int]) -> GraphSpec:
    """A graph whose outputs are a CenterHead's (see `center_head_outputs`)."""
    return GraphSpec(key, graph_file(recipe, key), named(recipe, key, "inputs", inputs),
                     center_head_outputs(recipe, key, grid))
