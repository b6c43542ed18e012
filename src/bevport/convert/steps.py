"""Resumable steps: a step runs one `bevport` command and records the hashes of its inputs in `<work>/<step>.step.json`.

A rerun skips a step whose recorded inputs and command equal the current ones and whose outputs still exist;
`force` reruns it. Each step logs to `<work>/logs/<step>.log`; when it fails, the error names the step and shows
the log's last lines. A failed step leaves the outputs of earlier steps intact (every command writes atomically).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from bevport.errors import BevportError
from bevport.fsutil import atomic_write_bytes, sha256_file

TAIL_LINES = 25


class StepFailed(BevportError):
    pass


@dataclass
class Step:
    name: str
    image: str                       # "export" or "runtime": the container a docker runner uses
    argv: List[str]                  # bevport arguments, with paths as Mount-relative HostPaths (see runner)
    inputs: Dict[str, Path]          # what decides whether the step must run again: files or folders
    outputs: List[Path]              # must all exist for a step to count as done
    settings: Dict[str, object] = field(default_factory=dict)   # non-path inputs (seed, device, flags)


def fingerprint(path: Path) -> str:
    """sha256 of a file; for a folder, of its files' relative paths, sizes and modification times (datasets hold
    thousands of frames: reading them all on every run would cost more than the check saves)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "tree:" + digest.hexdigest()


def record(step: Step, runner_name: str, image_id: Optional[str]) -> Dict:
    return {"step": step.name, "argv": [str(a) for a in step.argv], "settings": step.settings,
            "inputs": {k: fingerprint(v) for k, v in sorted(step.inputs.items())},
            "runner": runner_name, "image": image_id}


def state_file(work: Path, step: Step) -> Path:
    return Path(work) / f"{step.name}.step.json"


def is_done(work: Path, step: Step, current: Dict) -> bool:
    path = state_file(work, step)
    if not path.is_file() or not all(Path(p).exists() for p in step.outputs):
        return False
    try:
        previous = json.loads(path.read_text())
    except ValueError:
        return False
    keys = ("argv", "settings", "inputs", "image")
    return all(previous.get(k) == current.get(k) for k in keys)


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_steps(steps: Sequence[Step], work: Path, runner, force: bool = False,
              progress: Callable[[str], None] = lambda m: None) -> Dict[str, str]:
    """Run the steps in order through `runner`; returns {step: "ran" | "skipped"}. The state file of a step that
    ran also holds its wall time ("seconds")."""
    work = Path(work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    outcome = {}
    for step in steps:
        current = record(step, runner.name, runner.image_id(step.image))
        if not force and is_done(work, step, current):
            progress(f"{step.name}: up to date, skipped")
            outcome[step.name] = "skipped"
            continue
        progress(f"{step.name}: running ({runner.name})")
        log = work / "logs" / f"{step.name}.log"
        start = time.perf_counter()
        code = runner.run(step, log)
        current["seconds"] = round(time.perf_counter() - start, 2)
        if code != 0:
            raise StepFailed(f"step `{step.name}` failed (exit {code}); last lines of {log}:\n"
                             f"{runner.host_view(log_tail(log))}",
                             "fix the cause and rerun: finished steps are skipped (use --force to redo them)")
        atomic_write_bytes(state_file(work, step), (json.dumps(current, indent=2) + "\n").encode())
        progress(f"{step.name}: done in {current['seconds']:.0f} s")
        outcome[step.name] = "ran"
    return outcome
