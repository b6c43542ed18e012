"""Kill-and-resume: `invoke convert` killed with SIGKILL at random points inside its steps, resumed each time, must
end in the bundle an uninterrupted run gives (same archive sha256). Written to JSON.

    python benchmarks/resume.py [--kills 10] [--seed 0] [--runner local] [--out benchmarks/results/resume.json]

One uninterrupted convert of the synthetic checkpoint gives the reference archive and each step's duration. Then a
second work folder is converted with kills: each kill picks a step (in step order, several kills may hit one step)
and a point inside it (a uniform fraction of the step's reference duration after the step has started), kills the
whole process group (invoke and the bevport process of the step) with SIGKILL, and the next run resumes. After the
last kill one run goes to the end; its archive is compared with the reference.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from export import host  # benchmarks/export.py: the CPU and the ISA OpenVINO uses

ROOT = Path(__file__).resolve().parents[1]


def convert_command(ckpt: Path, data: Path, work: Path, dist: Path, runner: str):
    return [sys.executable, "-m", "invoke", "convert", "--ckpt", str(ckpt), "--data", str(data), "--work", str(work),
            "--dist", str(dist), "--runner", runner, "--num-samples", "2", "--holdout", "1", "--allow-drift"]


def run_to_end(command) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def step_order_and_seconds(work: Path):
    states = [json.loads(p.read_text()) for p in work.glob("*.step.json")]
    order = ["export", "calibrate", "quantize", "validate", "bench", "pictures", "bundle"]
    seconds = {s["step"]: s["seconds"] for s in states}
    return [s for s in order if s in seconds], seconds


def archive_sha(dist: Path) -> str:
    from bevport.fsutil import sha256_file

    (archive,) = dist.glob("*.tar.gz")
    return sha256_file(archive)


def kill_inside(command, work: Path, step: str, previous, delay: float, timeout: float = 1800) -> dict:
    """Start a (resuming) convert, wait until `step` has started (the step before it is recorded done), wait
    `delay` seconds more, then SIGKILL the process group. Returns what happened."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    began = time.perf_counter()
    marker = work / f"{previous}.step.json" if previous else None
    while marker is not None and not marker.exists():
        if process.poll() is not None or time.perf_counter() - began > timeout:
            raise RuntimeError(f"the convert ended or stalled before {step} started (exit {process.returncode})")
        time.sleep(0.05)
    time.sleep(delay)
    finished = process.poll() is not None
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return {"step": step, "delay_s": round(delay, 2), "killed_after_s": round(time.perf_counter() - began, 2),
            "convert_had_finished": finished}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runner", default="local")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/resume.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bevport = [sys.executable, "-m", "bevport"]
        subprocess.run(bevport + ["synth-ckpt", "--out", str(tmp / "s.pth"), "-q"], check=True)
        subprocess.run(bevport + ["synth-data", "--frames", "6", "--out", str(tmp / "scenes"), "-q"], check=True)
        reference = convert_command(tmp / "s.pth", tmp / "scenes", tmp / "ref" / "work", tmp / "ref" / "dist",
                                    args.runner)
        reference_s = run_to_end(reference)
        steps, seconds = step_order_and_seconds(tmp / "ref" / "work")
        expected = archive_sha(tmp / "ref" / "dist")

        work, dist = tmp / "killed" / "work", tmp / "killed" / "dist"
        command = convert_command(tmp / "s.pth", tmp / "scenes", work, dist, args.runner)
        targets = sorted((rng.randrange(len(steps)), rng.uniform(0.1, 0.9)) for _ in range(args.kills))
        kills = []
        for index, fraction in targets:
            step = steps[index]
            previous = steps[index - 1] if index else None
            kills.append(kill_inside(command, work, step, previous, fraction * seconds[step]))
        resumed_s = run_to_end(command)
        got = archive_sha(dist)
    result = {
        "benchmark": f"invoke convert ({args.runner} runner) killed with SIGKILL {args.kills} times inside its steps, "
                     "resumed after each kill",
        "reference": {"wall_s": round(reference_s, 1), "step_seconds": seconds, "archive_sha256": expected},
        "kills": kills,
        "steps_killed": sorted({k["step"] for k in kills}, key=steps.index),
        "final_resume_s": round(resumed_s, 1),
        "archive_sha256": got,
        "identical_bundle": got == expected,
        "host": host(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(kills)} kills in {len(result['steps_killed'])} steps; final bundle "
          f"{'identical to' if got == expected else 'DIFFERENT from'} the uninterrupted one -> {args.out}")
    if got != expected:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
