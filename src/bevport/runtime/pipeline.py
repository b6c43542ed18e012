"""What every architecture's pipeline shares: compiled graphs, per-stage timing, and the frame loop.

An architecture's module (`bevport.pipelines.<architecture>`) subclasses `Pipeline` with the host work between its
graphs: `prepare` turns a dataset frame into graph-independent inputs, `start` launches a frame (the work that can
overlap another frame's), `finish` completes it. calibrate, infer, validate and bench all drive `run` (or `start` /
`finish` for several frames in flight). Every graph's feed and outputs are kept on the result, so calibration can
store exactly the tensors each graph saw.
"""
from __future__ import annotations

import contextlib
import importlib
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np

from bevport.contract import Contract
from bevport.errors import BevportError, DatasetError
from bevport.runtime.graphs import compile_graph, deploy_graphs, read_graph


@dataclass
class FrameInputs:
    """A frame read and preprocessed; architectures add their own fields."""
    frame_id: str

    def stats(self) -> Dict[str, int]:
        """Per-frame figures recorded in the calibration manifest."""
        return {}

    def notes(self) -> List[str]:
        """Warnings about this frame (data the deploy graphs cannot see, ...)."""
        return []


@dataclass
class FrameResult:
    inputs: FrameInputs
    feeds: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)    # graph key -> its named inputs
    outputs: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)  # graph key -> its named outputs
    seconds: Dict[str, float] = field(default_factory=dict)                  # stage -> wall time in this frame
    pending: Dict[str, object] = field(default_factory=dict)                 # in-flight work between start/finish


class Pipeline:
    """The compiled deploy graphs of a recipe and the host stages between them."""

    def __init__(self, recipe, contract: Contract, compiled: Dict[str, object], deploy_cap: bool = False):
        self.recipe = recipe
        self.contract = contract
        self.compiled = compiled
        # Reproduce the deploy binary's input limits (V2X: the static V pillars) instead of every input training saw.
        self.deploy_cap = deploy_cap
        self.seconds: Dict[str, float] = defaultdict(float)  # accumulated wall time per graph and host stage
        self._requests: Dict[str, object] = {}                # one reusable synchronous request per graph

    @classmethod
    def from_files(cls, recipe, contract: Contract, files: Dict[str, Path], device: str = "CPU",
                   precision: str = "f32", core=None, config: Optional[Dict] = None,
                   deploy_cap: bool = False) -> "Pipeline":
        """Compile each deploy graph's file (ONNX or IR), after checking it against the contract."""
        import openvino as ov

        core = core or ov.Core()
        compiled = {key: compile_graph(core, read_graph(core, files[key], contract[key]), device, precision, config)
                    for key in deploy_graphs(recipe)}
        pipeline = cls(recipe, contract, compiled, deploy_cap)
        pipeline.attach(Path(next(iter(files.values()))).parent)
        return pipeline

    def attach(self, folder: Path) -> None:
        """Read what the architecture keeps beside its graphs in `folder` (export's artifacts); nothing by default."""

    # --------------------------------------------------------------------------------- what architectures define
    def prepare(self, frame, channel_order: str = "training") -> FrameInputs:
        """Read one frame and compute every graph-independent input; DatasetError on an unreadable frame."""
        raise NotImplementedError

    def start(self, inputs: FrameInputs) -> FrameResult:
        """Launch a frame: asynchronous graphs are started, host work that can overlap them is done."""
        raise NotImplementedError

    def finish(self, result: FrameResult) -> FrameResult:
        """Wait for the frame's asynchronous graphs and run the rest."""
        raise NotImplementedError

    def inspect(self, inputs: FrameInputs, warn: Callable[[str], None]) -> None:
        """Checks of a dataset's first frame (e.g. value ranges the checkpoint was trained on)."""

    def settings(self) -> Dict[str, object]:
        """The recipe settings that shaped the graph inputs, recorded in the calibration manifest."""
        return {}

    # ------------------------------------------------------------------------------------------------- shared
    def run(self, inputs: FrameInputs) -> FrameResult:
        """Every graph for one frame, with each graph's feed and outputs and per-stage timings on the result."""
        return self.finish(self.start(inputs))

    def head_outputs(self, result: FrameResult) -> Dict[str, np.ndarray]:
        """Every output tensor that carries head attributes (contract slices), by name."""
        return {t.name: result.outputs[spec.key][t.name] for spec in self.contract
                if spec.key in result.outputs for t in spec.outputs if t.slices}

    @contextlib.contextmanager
    def timed(self, stage: str, result: Optional[FrameResult] = None):
        start = time.perf_counter()
        yield
        self.record(stage, time.perf_counter() - start, result)

    def record(self, stage: str, seconds: float, result: Optional[FrameResult] = None) -> None:
        self.seconds[stage] += seconds
        if result is not None:
            result.seconds[stage] = result.seconds.get(stage, 0.0) + seconds

    def run_graph(self, key: str, feed: Dict[str, np.ndarray], result: FrameResult) -> Dict[str, np.ndarray]:
        """One synchronous inference of graph `key`, recorded on the result."""
        result.feeds[key] = feed
        with self.timed(key, result):
            result.outputs[key] = self.infer(key, feed)
        return result.outputs[key]

    def infer(self, key: str, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Graph `key` on named inputs, through its reusable request; the inputs are read in place (no copy), the
        outputs are the caller's own arrays."""
        request = self._requests.get(key)
        if request is None:
            request = self._requests[key] = self.compiled[key].create_infer_request()
        spec = self.contract[key]
        outputs = request.infer({t.name: feed[t.name] for t in spec.inputs}, share_inputs=True)
        return {t.name: outputs[self.compiled[key].output(t.name)] for t in spec.outputs}

    def feed(self, key: str, *arrays: np.ndarray) -> Dict[str, np.ndarray]:
        """Graph `key`'s inputs by contract name, from arrays in contract order."""
        return {t.name: a for t, a in zip(self.contract[key].inputs, arrays)}

    def output(self, result: FrameResult, key: str, index: int = 0) -> np.ndarray:
        """Graph `key`'s output number `index` (contract order) on the result."""
        return result.outputs[key][self.contract[key].outputs[index].name]


def pipeline_class(recipe):
    """The recipe architecture's Pipeline subclass (`bevport.pipelines.<architecture>.Pipeline`)."""
    module = importlib.import_module(f"bevport.pipelines.{recipe.architecture}")
    if not hasattr(module, "Pipeline"):
        raise BevportError(f"recipe {recipe.name}: the {recipe.architecture} architecture has no runtime pipeline yet "
                           "(its graphs export; calibrate, quantize, infer, validate and bench need the pipeline)")
    return module.Pipeline


def prepared_frames(pipeline: Pipeline, dataset, start: int = 0, channel_order: str = "training",
                    on_bad_frame: str = "skip", warn: Callable[[str], None] = lambda m: None,
                    skipped: Optional[List[Dict]] = None) -> Iterator[Tuple[object, FrameInputs, float]]:
    """(frame, inputs, seconds spent reading and preprocessing) in dataset order from index `start`.

    An unreadable frame is skipped with a warning and recorded in `skipped`, or raised with on_bad_frame="fail".
    What the frame's inputs note (e.g. pillars beyond the static V) is warned about."""
    for index in range(start, len(dataset)):
        began = time.perf_counter()
        try:
            frame = dataset.frame(index)
            inputs = pipeline.prepare(frame, channel_order)
        except DatasetError as exc:
            if on_bad_frame == "fail":
                raise
            warn(f"skipping frame {dataset.ids[index]}: {exc.message}")
            if skipped is not None:
                skipped.append({"id": dataset.ids[index], "reason": exc.message})
            continue
        for note in inputs.notes():
            warn(note)
        yield frame, inputs, time.perf_counter() - began


T = TypeVar("T")
PREFETCH = 2   # frames read and preprocessed ahead of the one running


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """`items`, produced on a background thread up to `depth` ahead of the consumer: frame N+1 is read and
    preprocessed while frame N runs (NumPy, PIL and OpenVINO release the GIL). Errors reach the consumer in order;
    leaving the loop stops the producer after the item it is working on. depth 0: in the calling thread."""
    if depth <= 0:
        yield from items
        return
    handoff: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message) -> bool:
        while not stop.is_set():
            try:
                handoff.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as exc:   # handed to the consumer, raised there
            put(("error", exc))

    thread = threading.Thread(target=produce, name="bevport-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = handoff.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
