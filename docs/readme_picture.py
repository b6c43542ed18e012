"""Regenerate docs/infer_example.png: `bevport infer --vis-dir` on a synthetic scene, with an oracle head.

    python docs/readme_picture.py --bundle work/demo/ir --scenes work/demo/scenes [--frame 000003]

The synthetic checkpoint's random weights give meaningless boxes, so this copies the bundle and replaces its head
by one that outputs the frame's ground-truth boxes (tests/planted.py). Everything else in the picture (the camera
graph's input, the point cloud, projection, drawing) is the real pipeline's.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from PIL import Image  # noqa: E402
from planted import encode, write_head_ir  # noqa: E402

from bevport.cli import main as bevport  # noqa: E402
from bevport.contract import build_contract  # noqa: E402
from bevport.data.dataset import open_dataset  # noqa: E402
from bevport.recipe import load_recipe  # noqa: E402
from bevport.runtime.kitti import kitti_class_labels, kitti_to_lidar_boxes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--scenes", type=Path, required=True)
    parser.add_argument("--frame", default="000003")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "infer_example.png")
    args = parser.parse_args()
    recipe = load_recipe("v2xfusion-pp-r34")
    contract = build_contract(recipe)
    frame = open_dataset(args.scenes).frame(args.frame)
    objects = [o for o in frame.objects if o.type != "DontCare"]
    boxes = kitti_to_lidar_boxes(objects, frame.calib, heading="dair2kitti")
    boxes[:, 2] += boxes[:, 5] / 2                               # the head predicts the centre height
    with tempfile.TemporaryDirectory() as tmp:
        bundle, data = Path(tmp) / "bundle", Path(tmp) / "data"
        shutil.copytree(args.bundle, bundle)
        write_head_ir(contract, encode(recipe, contract, boxes, kitti_class_labels(objects, recipe.class_names)),
                      bundle / "quantized_head.xml")
        (data / "ImageSets").mkdir(parents=True)
        shutil.copytree(args.scenes, data, dirs_exist_ok=True)
        (data / "ImageSets" / "one.txt").write_text(args.frame + "\n")
        bevport(["infer", "--bundle", str(bundle), "--data", str(data), "--split", "one", "--vis-dir",
                 str(Path(tmp) / "vis"), "--no-cache", "-q"])
        picture = Image.open(Path(tmp) / "vis" / f"frame_{args.frame}.png")
        picture.resize((picture.width * 3 // 5, picture.height * 3 // 5), Image.LANCZOS).save(args.out, optimize=True)


if __name__ == "__main__":
    main()
