"""Wall time of `invoke convert` per step, with the local and (when an engine and the images are there) the Docker
runner, and the size of both images, written to JSON.

    python benchmarks/convert.py [--frames 8] [--runners local,docker] [--out benchmarks/results/convert.json]

Each runner converts the synthetic checkpoint from scratch into its own workspace; the per-step times are the ones
the steps record in `<work>/<step>.step.json`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bevport.convert.plan import ConvertRequest
from bevport.convert.run import run_convert
from bevport.convert.runner import IMAGES, image_tag
from export import host  # benchmarks/export.py: the CPU and the ISA OpenVINO uses


def image_sizes():
    try:
        from bevport.convert.runner import docker_client

        client = docker_client()
        return {kind: round(client.images.get(image_tag(kind)).attrs["Size"] / 2 ** 20, 1) for kind in IMAGES}
    except Exception as exc:  # no SDK, engine or image: report why instead of sizes
        return {"unavailable": str(exc).splitlines()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="calibration frames")
    parser.add_argument("--runners", default="local,docker")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/convert.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"frames": args.frames, "runners": {}, "image_mib": image_sizes(), "host": host()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from bevport.cli import main as bevport

        bevport(["synth-ckpt", "--out", str(tmp / "synthetic.pth"), "-q"])
        for runner in args.runners.split(","):
            req = ConvertRequest(tmp / "synthetic.pth", tmp / runner / "work", tmp / runner / "dist",
                                 num_samples=args.frames, holdout=2, allow_drift=True)
            start = time.perf_counter()
            try:
                run_convert(req, runner)
            except Exception as exc:  # one runner failing must not hide the other's figures
                result["runners"][runner] = {"error": str(exc).splitlines()[0]}
                continue
            steps = {p.name.split(".")[0]: json.loads(p.read_text()).get("seconds")
                     for p in sorted(req.work.glob("*.step.json"))}
            archive = next(req.dist.glob("*.tar.gz"))
            result["runners"][runner] = {"total_s": round(time.perf_counter() - start, 1), "steps_s": steps,
                                         "archive_mib": round(archive.stat().st_size / 2 ** 20, 1)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
