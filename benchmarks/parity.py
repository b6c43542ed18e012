"""The export parity gate on several seeded checkpoints: per graph output, OpenVINO's error and PyTorch float32's own
error, both against a float64 run of the module, written to JSON.

    python benchmarks/parity.py [--seeds 0 1 2] [--out benchmarks/results/parity.json]

`ratio` = OpenVINO's error / PyTorch float32's: how far beyond float32's inherent rounding the exported graph goes
on this CPU. The recipe's gate fails an export at `factor` x inherent + `floor`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from export import host, run  # benchmarks/export.py: bevport commands in fresh processes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/parity.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            ckpt, onnx = Path(tmp, f"s{seed}.pth"), Path(tmp, f"onnx{seed}")
            run(["synth-ckpt", "--seed", str(seed), "--out", str(ckpt), "-q"])
            run(["export", "--ckpt", str(ckpt), "--out", str(onnx), "-q"])
            parity = json.loads((onnx / "parity.json").read_text())
            seeds[seed] = {f"{graph}/{name}": {"openvino": o["max_rel_error"], "torch_f32": o["torch_f32_rel_error"],
                                               "ratio": round(o["max_rel_error"] / o["torch_f32_rel_error"], 2),
                                               "bound": o["bound"]}
                           for graph, r in parity["graphs"].items() for name, o in r["outputs"].items()}
    ratios = [o["ratio"] for outputs in seeds.values() for o in outputs.values()]
    result = {"benchmark": "export parity: OpenVINO (CPU, f32) and PyTorch float32 vs float64, relative to max |ref|",
              "gate": {"factor": parity["factor"], "floor": parity["floor"]},
              "worst_ratio": max(ratios), "median_ratio": sorted(ratios)[len(ratios) // 2],
              "seeds": seeds, "host": host()}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(args.seeds)} seeds: OpenVINO / float32 error ratio median {result['median_ratio']}, worst "
          f"{result['worst_ratio']} (gate factor {parity['factor']:g}) -> {args.out}")


if __name__ == "__main__":
    main()
