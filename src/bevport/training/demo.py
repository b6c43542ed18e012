"""Train the built-in demo weights: the recipe's `train.trained` part of the network, on synthetic scenes.

The rest of the network keeps the values `bevport synth-ckpt --seed <train.base_seed>` draws (the camera branch
among them), so its outputs can be computed once per frame: `cache` runs the seeded camera graph in OpenVINO at the
deploy resolution, pools it to the camera BEV exactly as the runtime does, and stores it beside the frame's training
voxels and CenterPoint targets. Each step then runs the trained part (PFN -> scatter -> fuser -> decoder -> head)
on BEV crops of a few cached frames: the network is fully convolutional, so crops aligned to its strides train the
same weights as whole maps at a fraction of the cost.

Seeded and resumable: the crop of step s depends only on (seed, s), and `state.pt` (trained tensors, optimizer,
step, loss log) is written atomically every `save_every` steps; a rerun continues from it.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from bevport.fsutil import atomic_write_bytes
from bevport.geometry.lss import PoolTableCache, bev_pool
from bevport.geometry.voxelize import voxelize
from bevport.recipe import DEFAULT_RECIPE, Recipe, load_recipe
from bevport.training.centerpoint import TargetGrid, collate, dense_targets, task_loss

CROP_ALIGN = 8          # crop offsets are multiples of the decoder's total stride (4) and its upsampling


# ----------------------------------------------------------------------------------------------- the trained part

def trained_keys(recipe: Recipe, model: torch.nn.Module) -> List[str]:
    """The state_dict keys of the trained part: those under a `train.trained` prefix, plus the BatchNorm layers
    (affine and statistics) under a `train.trained_norms` prefix, so frozen convolutions see renormalised inputs."""
    t = recipe.train
    norms = [name + "." for name, m in model.named_modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and name.startswith(tuple(t.trained_norms))]
    prefixes = tuple(t.trained) + tuple(norms)
    return [k for k in model.state_dict() if k.startswith(prefixes)]


def trained_tensors(recipe: Recipe, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    keys, state = trained_keys(recipe, model), model.state_dict()
    return {k: state[k].detach().clone().contiguous() for k in keys}


def set_trainable(recipe: Recipe, model: torch.nn.Module) -> List[torch.nn.Parameter]:
    """requires_grad on the trained part only; train mode (BatchNorm statistics update) on the modules holding it."""
    keys = set(trained_keys(recipe, model))
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in keys)
        if p.requires_grad:
            params.append(p)
    model.eval()
    for name, module in model.named_modules():
        own = [f"{name}.{k}" for k, _ in list(module.named_parameters(recurse=False)) +
               list(module.named_buffers(recurse=False))]
        if own and all(k in keys for k in own):
            module.training = True          # this module only: its children decide for themselves
    return params


# -------------------------------------------------------------------------------------------------------- cache

def seeded_model(recipe: Recipe):
    from bevport.models import architecture
    from bevport.models.synthetic import synthetic_state_dict

    model = architecture(recipe).build(recipe)
    model.load_state_dict(synthetic_state_dict(recipe, int(recipe.train.base_seed)))
    return model.eval()


def _camera_graph(recipe: Recipe, model):
    """The seeded camera graph compiled by OpenVINO at f32 (what the runtime computes, much faster than torch)."""
    import openvino as ov

    from bevport.models.v2xfusion import CameraGraph

    h, w = recipe.input.image_size
    converted = ov.convert_model(CameraGraph(model), example_input=torch.zeros(1, 3, h, w))
    return ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def frame_boxes(recipe: Recipe, frame):
    """Labelled boxes [N,9] (x, y, z_centre, dx, dy, dz, yaw, 0, 0) in the convention predictions are written in
    (result2kitti), and their class indices; objects of no model class are left out."""
    from bevport.runtime.kitti import kitti_class_labels, kitti_to_lidar_boxes

    objects = [o for o in frame.objects or [] if o.type != "DontCare"]
    boxes = kitti_to_lidar_boxes(objects, frame.calib, heading="result2kitti")
    labels = kitti_class_labels(objects, recipe.class_names)
    keep = labels >= 0
    boxes, labels = boxes[keep], labels[keep]
    out = np.zeros((len(boxes), 9), np.float64)
    out[:, :7] = boxes
    out[:, 2] += boxes[:, 5] / 2
    return out, labels


def cache_frame(recipe: Recipe, frame, camera, tables: PoolTableCache) -> Dict[str, np.ndarray]:
    from bevport.data.preprocess import camera_metas, image_tensor
    from bevport.pipelines.v2xfusion import scaled_points

    view = frame.cameras[0]
    out = camera(image_tensor(recipe, view.image()))
    feature, depth = out[0], out[1]
    _, c, fh, fw = feature.shape
    table = tables.get(*camera_metas(recipe, view).geometry_args())
    cam_bev = bev_pool(table, depth[0], feature.reshape(fh, fw, c))
    points = frame.points()
    points = scaled_points(recipe, points[np.isfinite(points[:, : recipe.input.point_dims]).all(axis=1)])
    vox = recipe.model.lidar.voxelize
    voxels = voxelize(points, vox.point_cloud_range, vox.voxel_size, vox.max_num_points, vox.max_voxels[0])
    boxes, labels = frame_boxes(recipe, frame)
    return {"cam_bev": cam_bev.astype(np.float16), "features": voxels.features, "counts": voxels.counts,
            "coords": voxels.coords, "boxes": boxes, "labels": labels}


def build_cache(recipe: Recipe, data: Path, cache: Path, progress=print) -> List[Path]:
    """One .npz per labelled frame of `data` (skipping those already cached)."""
    from bevport.formats import dataset_format

    dataset = dataset_format(recipe).open_dataset(recipe, data)
    cache.mkdir(parents=True, exist_ok=True)
    camera, tables, files = None, PoolTableCache(recipe), []
    start = time.perf_counter()
    for i, frame_id in enumerate(dataset.ids):
        path = cache / f"{frame_id}.npz"
        files.append(path)
        if path.exists():
            continue
        if camera is None:
            camera = _camera_graph(recipe, seeded_model(recipe))
        buffer = io.BytesIO()
        np.savez(buffer, **cache_frame(recipe, dataset.frame(frame_id), camera, tables))
        atomic_write_bytes(path, buffer.getvalue())
        progress(f"[{time.perf_counter() - start:7.1f}s] cached frame {i + 1}/{len(dataset.ids)}")
    return files


# ------------------------------------------------------------------------------------------------------ batches

class Frames:
    """The cached frames in memory, and the crops a step trains on."""

    def __init__(self, recipe: Recipe, files: Sequence[Path]):
        self.grid = TargetGrid(recipe)
        self.frames = []
        for path in files:
            with np.load(path) as z:
                f = {k: z[k] for k in z.files}
            f["targets"] = dense_targets(self.grid, f["boxes"], f["labels"])
            self.frames.append(f)
        self.crop = tuple(int(v) for v in recipe.train.crop)
        self.crop_y_range = [int(v) for v in recipe.train.crop_y_range]

    def __len__(self) -> int:
        return len(self.frames)

    def batch(self, rng: np.random.Generator, size: int):
        picks = rng.choice(len(self.frames), size=size, replace=False)
        nx, ny = self.grid.shape
        cx, cy = self.crop
        xs = rng.integers(0, (nx - cx) // CROP_ALIGN + 1, size=size) * CROP_ALIGN
        lo, hi = self.crop_y_range
        ys = rng.integers(lo // CROP_ALIGN, (hi - cy) // CROP_ALIGN + 1, size=size) * CROP_ALIGN
        return [(self.frames[i], slice(x, x + cx), slice(y, y + cy)) for i, x, y in zip(picks, xs, ys)]


def lidar_canvas(model, cached: Dict[str, np.ndarray]) -> torch.Tensor:
    """PFN over the frame's pillars, scattered by the model's own PointPillarsScatter to its LiDAR BEV [C, nx, ny]."""
    coords = torch.from_numpy(np.pad(cached["coords"], ((0, 0), (1, 0))))          # (batch 0, ix, iy, iz)
    pillars = model.pillar_features(torch.from_numpy(cached["features"]), torch.from_numpy(cached["counts"]), coords)
    return model.scatter(pillars, coords, 1)[0]


def forward_crops(model, crops) -> List[Dict[str, torch.Tensor]]:
    """PFN + scatter on each frame's whole grid, then fuser + decoder + head on the batch of crops."""
    cam = [torch.from_numpy(f["cam_bev"][:, xs, ys].astype(np.float32)) for f, xs, ys in crops]
    lidar = [lidar_canvas(model, f)[:, xs, ys] for f, xs, ys in crops]
    return model.head(model.decode_bev(torch.stack(cam), torch.stack(lidar)))


def crop_targets(crops) -> List[Dict[str, torch.Tensor]]:
    return collate([[{k: v[..., xs, ys] for k, v in t.items()} for t in f["targets"]] for f, xs, ys in crops])


def loss_of(recipe: Recipe, preds, targets) -> Dict[str, torch.Tensor]:
    weights = torch.tensor([float(w) for w in recipe.train.code_weights])
    heat, box = zip(*(task_loss(p, t, weights, recipe.train) for p, t in zip(preds, targets)))
    return {"heatmap": sum(heat), "box": sum(box)}


# -------------------------------------------------------------------------------------------------------- train

def train(recipe: Recipe, files: Sequence[Path], work: Path, steps: int, seed: int = 0,
          batch_size: Optional[int] = None, until: Optional[int] = None, log=print) -> Dict:
    """Train `steps` steps (the schedule's length), resuming from `work`/state.pt; `until` stops earlier, saved."""
    t = recipe.train
    batch_size = batch_size or int(t.batch_size)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = seeded_model(recipe)
    params = set_trainable(recipe, model)
    optimizer = torch.optim.AdamW(params, lr=float(t.lr), weight_decay=float(t.weight_decay))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=float(t.lr), total_steps=steps,
                                                   pct_start=0.3, div_factor=10.0, final_div_factor=100.0)
    state_path, history, step = work / "state.pt", [], 0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu")
        model.load_state_dict(state["trained"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, history = state["step"], state["history"]
        log(f"resuming at step {step}")
    frames = Frames(recipe, files)
    start = time.perf_counter()
    stop = min(steps, until or steps)
    while step < stop:
        rng = np.random.default_rng([seed, step])
        crops = frames.batch(rng, batch_size)
        losses = loss_of(recipe, forward_crops(model, crops), crop_targets(crops))
        total = losses["heatmap"] + losses["box"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, float(t.grad_clip))
        optimizer.step()
        schedule.step()
        step += 1
        history.append([step, round(losses["heatmap"].item(), 5), round(losses["box"].item(), 5)])
        if step % int(t.log_every) == 0 or step == stop:
            recent = np.array(history[-int(t.log_every):])[:, 1:].mean(0)
            log(f"[{time.perf_counter() - start:7.1f}s] step {step}/{steps}  heatmap {recent[0]:.4f}  "
                f"box {recent[1]:.4f}  lr {schedule.get_last_lr()[0]:.2e}")
        if step % int(t.save_every) == 0 or step == stop:
            buffer = io.BytesIO()
            torch.save({"trained": trained_tensors(recipe, model), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "step": step, "history": history}, buffer)
            atomic_write_bytes(state_path, buffer.getvalue())
    model.eval()
    return {"model": model, "history": history, "step": step}


# ----------------------------------------------------------------------------------------------------- evaluate

@torch.no_grad()
def detect_cached(recipe: Recipe, model, cached: Dict[str, np.ndarray]):
    """The model's detections on one cached frame, decoded as the runtime decodes the head graph's outputs."""
    from bevport.runtime.decode import decode_tasks

    cam = torch.from_numpy(cached["cam_bev"].astype(np.float32))[None]
    tasks = model.head(model.decode_bev(cam, lidar_canvas(model, cached)[None]))
    return decode_tasks([{k: v.numpy() for k, v in task.items()} for task in tasks], recipe)


def evaluate(recipe: Recipe, model, data: Path, files: Sequence[Path], pred_dir: Path) -> Dict:
    """KITTI R40 AP (bevport's evaluator) of the model's detections on cached labelled frames."""
    from bevport.formats import dataset_format

    fmt = dataset_format(recipe)
    dataset = fmt.open_dataset(recipe, data)
    model.eval()
    ids = [path.stem for path in files]
    for frame_id, path in zip(ids, files):
        with np.load(path) as z:
            cached = {k: z[k] for k in z.files}
        fmt.write_predictions(pred_dir, dataset.frame(frame_id), detect_cached(recipe, model, cached), recipe)
    return json.loads(fmt.evaluate(dataset, pred_dir, ids).read_text())


def moderate_ap(result: Dict) -> str:
    return "  ".join(f"{cls} BEV {v['moderate']['AP_BEV']:.1f} 3D {v['moderate']['AP_3D']:.1f}"
                     for cls, v in result["classes"].items())


def _scenes(recipe: Recipe, work: Path, seed: int, frames: int) -> Path:
    from bevport.formats import dataset_format

    data = work / f"scenes-seed{seed}-{frames}"
    if not data.exists():
        print(f"writing {frames} synthetic scenes (seed {seed}) to {data}")
        dataset_format(recipe).write_synthetic(data, frames, seed)
    return data


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bevport.training.demo", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default=DEFAULT_RECIPE)
    p.add_argument("--work", type=Path, default=Path("work/train-demo"), help="cache, state and logs")
    p.add_argument("--frames", type=int, help="synthetic training frames (default: the recipe's train.frames)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the recipe's train.steps)")
    p.add_argument("--until", type=int, help="stop after this step (resumable); the schedule keeps --steps")
    p.add_argument("--eval-frames", type=int, default=20, help="held-out frames (seed 2000) scored at the end")
    p.add_argument("--out", type=Path, help="write the trained tensors here (.npz)")
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe)
    t = recipe.train
    frames, steps = args.frames or int(t.frames), args.steps or int(t.steps)
    data = _scenes(recipe, args.work, int(t.data_seed), frames)
    files = build_cache(recipe, data, args.work / "cache")
    result = train(recipe, files, args.work, steps, int(t.seed), until=args.until)
    if result["step"] < steps:
        print(f"stopped at step {result['step']}/{steps}; run again to resume")
        return
    (args.work / "history.json").write_text(json.dumps(result["history"]) + "\n")
    if args.eval_frames:
        held_out = _scenes(recipe, args.work, 2000, args.eval_frames)
        ap = evaluate(recipe, result["model"], held_out, build_cache(recipe, held_out, args.work / "cache-eval"),
                      args.work / "pred-eval")
        print(f"held-out AP (R40, moderate): {moderate_ap(ap)}")
    if args.out:
        from bevport.models.trained import write_trained
        digest = write_trained(recipe, trained_tensors(recipe, result["model"]), args.out)
        print(f"wrote {args.out} (sha256 {digest}); to ship it, copy it to src/bevport/weights/ and set the "
              "recipe's train.weights (file, sha256)")


if __name__ == "__main__":
    main()
