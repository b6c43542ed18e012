"""invoke tasks: thin wrappers that resolve paths and call the `bevport` CLI (all logic lives in the package).

Defaults that belong to bevport (the recipe, frame counts, seeds, the device) are not repeated here: an option left
unset is not passed, and the CLI's or the recipe's own default applies.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from invoke import task

ROOT = Path(__file__).resolve().parent
PY = sys.executable


def _given(**options):
    """The options that were set (None: leave it to bevport's default)."""
    return {name: value for name, value in options.items() if value is not None}


def _bevport(c, command, *positional, **options):
    """Run `python -m bevport COMMAND ...` in this Python environment. An option left at None or False is not
    passed; True becomes a bare `--flag`; `some_name` is spelled `--some-name`."""
    argv = [PY, "-m", "bevport", command] + [str(p) for p in positional]
    for name, value in options.items():
        if value is None or value is False:
            continue
        argv.append("--" + name.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    c.run(" ".join(shlex.quote(a) for a in argv), pty=sys.stdout.isatty())


@task(help={"seed": "seed of random weights (default: the CLI's)", "out": "checkpoint to write",
            "trained": "the trained demo weights (the demo's checkpoint) instead of random ones",
            "recipe": "recipe name or path (default: the CLI's)",
            "runner": "auto (the export image when Docker is ready), docker or local"})
def synth_ckpt(c, seed=None, out="work/demo/synthetic.pth", trained=False, recipe=None, runner="auto"):
    """Write a deterministic built-in checkpoint (trained demo weights or seeded random ones); with Docker the host
    needs no torch."""
    from bevport.cli import console, run_reporting_errors
    from bevport.convert.run import synthetic_checkpoint

    path = run_reporting_errors(synthetic_checkpoint, Path(out), runner, trained=trained,
                                **_given(recipe=recipe, seed=None if seed is None else int(seed)))
    console.print(f"synthetic checkpoint: {path}", highlight=False)


@task(help={"ckpt": "training checkpoint (.pth)", "config": "upstream training config (optional)",
            "out": "output folder", "sparsity": "apply 2:4 sparsity masks",
            "recipe": "recipe name or path (default: the CLI's)"})
def export(c, ckpt, out="work/onnx", recipe=None, config=None, sparsity=False):
    """Checkpoint -> the deploy graphs as ONNX, with an OpenVINO parity check (runs in this Python env)."""
    _bevport(c, "export", recipe=recipe, config=config, ckpt=ckpt, out=out, sparsity=sparsity)


@task(help={"frames": "number of scenes (default: the CLI's)", "seed": "generator seed (default: the CLI's)",
            "out": "dataset folder (the recipe's dataset layout)", "recipe": "recipe name or path (default: the CLI's)"})
def synth_data(c, frames=None, seed=None, out="work/demo/scenes", recipe=None):
    """Write deterministic synthetic scenes (the built-in default dataset)."""
    _bevport(c, "synth-data", recipe=recipe, frames=frames, seed=seed, out=out, overwrite=True)


@task(help={"onnx": "export folder", "data": "dataset root (default: synthetic scenes)",
            "num_samples": "calibration frames (default: the recipe's)",
            "holdout": "held-out frames for the report (default: the recipe's)", "out": "output folder",
            "recipe": "recipe name or path (default: the CLI's)"})
def calibrate(c, onnx="work/onnx", data=None, num_samples=None, holdout=None, out="work/calib", recipe=None):
    """Run the FP32 graphs over dataset frames and store each graph's inputs (the calibration set)."""
    _bevport(c, "calibrate", recipe=recipe, onnx=onnx, data=data, num_samples=num_samples, holdout=holdout, out=out)


@task(help={"onnx": "export folder", "calib": "calibration set", "out": "IR folder",
            "recipe": "recipe name or path (default: the CLI's)"})
def quantize(c, onnx="work/onnx", calib="work/calib", out="work/ir", recipe=None):
    """NNCF INT8 quantization of the recipe's deploy graphs, FP32 IRs and the drift/latency report."""
    _bevport(c, "quantize", recipe=recipe, onnx=onnx, calib=calib, out=out)


@task(help={"bundle": "IR folder or release bundle", "data": "dataset (default: synthetic scenes)",
            "device": "CPU, GPU, AUTO ... (default: the CLI's)", "vis": "write pictures and a video",
            "preds": "predictions folder", "recipe": "recipe name or path (default: the CLI's)"})
def infer(c, bundle="work/ir", data=None, device=None, vis=False, preds="work/preds", recipe=None):
    """Run frames through the bundle: predictions, AP when the dataset has labels, pictures."""
    _bevport(c, "infer", recipe=recipe, bundle=bundle, data=data, device=device, pred_dir=preds,
             vis_dir="work/vis" if vis else None, video=vis)


@task(help={"bundle": "IR folder or release bundle", "data": "dataset",
            "device": "OpenVINO device (default: the CLI's)", "recipe": "recipe name or path (default: the CLI's)"})
def validate(c, bundle="work/ir", data=None, device=None, recipe=None):
    """Compile every IR on the device and compare FP32 with INT8 on held-out frames -> validate.json."""
    _bevport(c, "validate", recipe=recipe, bundle=bundle, data=data, device=device)


@task(help={"bundle": "IR folder or release bundle", "data": "dataset",
            "device": "OpenVINO device (default: the CLI's)", "recipe": "recipe name or path (default: the CLI's)"})
def bench(c, bundle="work/ir", data=None, device=None, recipe=None):
    """`bevport bench` on a bundle: per-stage latency and FPS, FP32 vs INT8 -> bench.json."""
    _bevport(c, "bench", recipe=recipe, bundle=bundle, data=data, device=device)


@task(help={"onnx": "export folder", "ir": "IR folder quantized from it", "validate": "validate.json (optional)",
            "bench": "bench.json (optional)", "vis": "pictures folder (optional)", "dist": "release folder",
            "recipe": "recipe name or path (default: the CLI's)"})
def bundle(c, onnx="work/onnx", ir="work/ir", validate=None, bench=None, vis=None, dist="dist", recipe=None):
    """Pack ONNX + IRs (+ reports) into dist/<recipe>-<ckpt sha256[:12]>/ and a deterministic .tar.gz."""
    _bevport(c, "bundle", recipe=recipe, onnx=onnx, ir=ir, dist=dist, validate=validate, bench=bench, vis=vis)


@task(positional=["path"], help={"path": "dist/<name> or dist/<name>.tar.gz"})
def verify(c, path):
    """Re-check every hash of a release bundle against its manifest."""
    _bevport(c, "verify", path)


# No positional arguments and no short flags: `invoke convert --help` must print help (an auto short flag `-h` for
# --holdout would take it, and a positional ckpt would swallow "--help" as a file name).
@task(positional=[], auto_shortflags=False,
      help={"ckpt": "training checkpoint (.pth), required", "data": "dataset root (default: synthetic scenes)",
            "config": "upstream training config", "recipe": "recipe name or path (default: the CLI's)",
            "runner": "docker (default), local or auto", "device": "CPU (default) or GPU",
            "num_samples": "calibration frames (default: the recipe's)",
            "holdout": "held-out frames (default: the recipe's)", "force": "redo finished steps",
            "ca_bundle": "site CA for containers", "sparsity": "apply 2:4 sparsity masks",
            "allow_drift": "report FP32-vs-INT8 drift beyond the recipe's bounds instead of failing",
            "work": "work folder of the resumable steps", "dist": "folder receiving the release bundle",
            "source": "the training repository the checkpoint came from: parity against its code is one more gate",
            "backend": "native (default) or reference: export the --source tree's own modules"})
def convert(c, ckpt=None, data=None, config=None, recipe=None, runner="docker", device=None, num_samples=None,
            holdout=None, work="work/convert", dist="dist", force=False, ca_bundle=None, sparsity=False,
            allow_drift=False, source=None, backend="native"):
    """Checkpoint -> ONNX -> calibration -> INT8 IRs -> validation -> release bundle in dist/ (resumable steps)."""
    from bevport.cli import console, run_reporting_errors
    from bevport.convert.plan import ConvertRequest
    from bevport.convert.run import run_convert

    if not ckpt:
        console.print("[red]error:[/] --ckpt is required: the training checkpoint to convert (.pth)")
        raise SystemExit(1)
    req = ConvertRequest(Path(ckpt), Path(work), Path(dist), sparsity=sparsity, allow_drift=allow_drift,
                         backend=backend,
                         **_given(recipe=recipe, config=Path(config) if config else None,
                                  source=Path(source) if source else None,
                                  data=Path(data) if data else None, device=device,
                                  num_samples=None if num_samples is None else int(num_samples),
                                  holdout=None if holdout is None else int(holdout)))
    outcome = run_reporting_errors(run_convert, req, runner, force, Path(ca_bundle) if ca_bundle else None,
                                   progress=lambda m: console.print(f"[dim]convert:[/] {m}"))
    console.print(f"[green]converted[/] ({', '.join(f'{k} {v}' for k, v in outcome.items())}) -> {dist}")


@task(positional=[], auto_shortflags=False,
      help={"ckpt": "training checkpoint (.pth), required", "source": "the training repository, required",
            "config": "training config (relative: inside --source)", "recipe": "recipe name or path",
            "onnx": "compare this export folder instead of exporting", "out": "report (parity-reference.json)",
            "data": "also compare on the first frames of this dataset (default: seeded inputs only)",
            "runner": "auto (default: the export image when Docker has it), docker or local"})
def parity(c, ckpt=None, source=None, config=None, recipe=None, onnx=None, out="work/parity-reference.json",
           runner="auto", data=None):
    """bevport's graphs against the user's own training code (the tree at --source) on the same inputs."""
    from bevport.cli import console, run_reporting_errors
    from bevport.convert.run import run_parity

    if not ckpt or not source:
        console.print("[red]error:[/] --ckpt and --source are required: the checkpoint and the training repository "
                      "it came from")
        raise SystemExit(1)
    report = run_reporting_errors(run_parity, Path(ckpt), Path(source), Path(out), runner,
                                  progress=lambda m: console.print(f"[dim]{m}[/]"),
                                  **_given(recipe=recipe, config=Path(config) if config else None,
                                           onnx=Path(onnx) if onnx else None, data=Path(data) if data else None))
    console.print(f"[green]parity[/]: every graph within bounds of the training tree's code -> {report}")


@task(help={"runner": "auto (Docker when an engine and the images are there), docker or local",
            "frames": "synthetic calibration frames (a demo setting; convert's default is the recipe's)",
            "recipe": "recipe name or path (default: the CLI's)"})
def demo(c, work="work/demo", runner="auto", frames=16, recipe=None):
    """The main job on built-in defaults: the recipe's demo checkpoint (its trained demo weights where the recipe has
    them, seeded random weights otherwise) + synthetic scenes through convert to a bundle, ending with a picture."""
    from bevport.cli import console, run_reporting_errors
    from bevport.convert.run import resolve_runner, synthetic_checkpoint
    from bevport.recipe import DEFAULT_RECIPE, load_recipe

    recipe = recipe or DEFAULT_RECIPE
    trained = bool((load_recipe(recipe).get("train") or {}).get("weights"))
    runner = resolve_runner(runner, progress=lambda m: console.print(f"[dim]demo:[/] {m}"))
    ckpt = run_reporting_errors(synthetic_checkpoint, Path(work, "trained.pth" if trained else "synthetic.pth"),
                                runner, recipe=recipe, trained=trained)
    if not trained:
        console.print(f"[yellow]demo:[/] {recipe} has no trained demo weights: seeded random weights, so the boxes "
                      "and the FP32-vs-INT8 drift mean nothing (drift is reported, not enforced)")
    # Demo settings, deliberately smaller than the recipe's: 16 calibration frames and 2 held-out frames keep the demo
    # at minutes. The trained demo weights meet the recipe's FP32-vs-INT8 bounds: validation gates the bundle.
    steps = Path(work, "convert") if recipe == DEFAULT_RECIPE else Path(work, Path(recipe).stem, "convert")
    convert(c, ckpt=str(ckpt), recipe=recipe, runner=runner, num_samples=frames, holdout=2, work=str(steps),
            dist=f"{work}/dist", allow_drift=not trained)
    bundle = sorted(Path(work, "dist").glob(f"{load_recipe(recipe).name}-*.tar.gz"))[-1]
    picture = sorted((steps / "vis").glob("frame_*.png"))[0]
    console.print(f"bundle: {bundle}\npicture: {picture}", highlight=False)


@task(help={"work": "scenes, cache, resumable state and logs",
            "out": "where the trained tensors go (default <work>/weights.npz; the recipe's train.weights names the "
                   "shipped file in src/bevport/weights/)",
            "recipe": "recipe name or path (default: the CLI's)"})
def train_demo(c, work="work/train-demo", out=None, recipe=None):
    """Retrain the built-in demo weights on synthetic scenes (about 75 min on 2 cores; resumes where it stopped)."""
    out = out or f"{work}/weights.npz"
    argv = [PY, "-m", "bevport.training.demo", "--work", work, "--out", out] + (["--recipe", recipe] if recipe else [])
    c.run(" ".join(shlex.quote(a) for a in argv), pty=sys.stdout.isatty())


@task(help={"slow": "run only the slow end-to-end tests", "docker": "run only the Docker end-to-end test",
            "k": "pytest -k expression",
            "reference": "folder holding the upstream training trees (runs tests/test_reference_source.py)"})
def test(c, slow=False, docker=False, k=None, reference=None):
    """The test suite CI runs (fast); --slow runs the end-to-end tests marked slow; --docker the Docker one;
    --reference <folder> the tests against the upstream training trees in that folder (DEVELOPERS.md)."""
    marker = ["-m", "slow"] if slow or reference else ["-m", "docker"] if docker else []
    args = ["-q"] + marker + (["-k", k] if k else [])
    if reference:
        os.environ["BEVPORT_REFERENCE_SRC"] = str(Path(reference).resolve())
        args.append("tests/test_reference_source.py")
    c.run(" ".join(shlex.quote(a) for a in [PY, "-m", "pytest"] + args), pty=sys.stdout.isatty())


@task
def benchmarks(c):
    """The scripts in benchmarks/: export, parity, geometry, camera-only pooling, calibrate+quantize, inference, resume,
    accuracy and INT8 tuning (+ parity against the upstream trees when BEVPORT_REFERENCE_SRC names them)
    -> benchmarks/results/*.json."""
    with c.cd(str(ROOT)):
        c.run(f"{PY} benchmarks/export.py")
        c.run(f"{PY} benchmarks/parity.py")
        c.run(f"{PY} benchmarks/pool.py")
        c.run(f"{PY} benchmarks/camera_only.py")
        if os.environ.get("BEVPORT_REFERENCE_SRC"):     # the upstream trees (DEVELOPERS.md) and the export image
            c.run(f"{PY} benchmarks/reference_parity.py")
    with c.cd(str(ROOT / "benchmarks")):
        c.run(f"{PY} quantize.py --out results/quantize.json")
        c.run(f"{PY} infer.py --out results/infer.json")
        c.run(f"{PY} resume.py --out results/resume.json")
        c.run(f"{PY} accuracy.py --work ../work/accuracy --out results/accuracy.json")
        c.run(f"{PY} int8_tuning.py --work ../work/accuracy --out results/int8_tuning.json")


# --------------------------------------------------------------------------------------------- images.* and doctor

def _client():
    from bevport.cli import run_reporting_errors
    from bevport.convert.runner import docker_client

    return run_reporting_errors(docker_client)


def _say(message: str) -> None:
    from bevport.cli import console

    console.print(message, highlight=False)


@task(help={"mirror": "Debian mirror (default: deb.debian.org)",
            "suites": "comma list of Debian suites (default: the ones --base-from debian-mirror builds on)",
            "workdir": "where the root filesystems are bootstrapped", "force": "rebuild bases that are present"})
def images_base(c, mirror=None, suites=None, workdir="work/rootfs", force=False):
    """Base images without a registry: debootstrap Debian and `docker import` it as bevport-base:<suite> (root)."""
    from bevport.cli import run_reporting_errors
    from bevport.convert.images import bootstrap_bases

    made = run_reporting_errors(bootstrap_bases, _client(), Path(workdir), suites.split(",") if suites else None,
                                progress=_say, force=force, **_given(mirror=mirror))
    for tag, image in made.items():
        if image:
            _say(f"[green]base[/] {tag} {image}")


@task(help={"kind": "export, runtime or both", "ca_bundle": "site CA bundle to trust inside the build",
            "base_from": "registry (digest-pinned defaults) or debian-mirror (bevport-base:* from images.base)",
            "export_base": "base image for the export image (overrides --base-from)",
            "runtime_base": "base image for the runtime image (overrides --base-from)",
            "gpu_runtime": "debian or intel (runtime image)",
            "reference_sources": "none (default) or pinned: the export image fetches the upstream training trees "
                                 "at their pinned commits (sha256-checked) for `parity --source pinned`"})
def images_build(c, kind="both", ca_bundle=None, base_from="registry", export_base=None, runtime_base=None,
                 gpu_runtime="debian", reference_sources="none"):
    """Build the export and/or runtime image with the Docker SDK (streamed log)."""
    from bevport.cli import run_reporting_errors
    from bevport.convert.images import build_images

    built = run_reporting_errors(build_images, _client(), kind, base_from, Path(ca_bundle) if ca_bundle else None,
                                 gpu_runtime, {"export": export_base, "runtime": runtime_base},
                                 progress=lambda line: print(line, flush=True), reference_sources=reference_sources)
    for name, image in built.items():
        _say(f"[green]built[/] {name}: {image}")


@task
def images_lock(c):
    """Regenerate docker/requirements/*.txt with hashes from the .in files (uv pip compile, per target Python)."""
    from bevport.convert.images import lock_commands

    with c.cd(str(ROOT)):
        for argv in lock_commands():
            c.run(" ".join(shlex.quote(a) for a in argv))


@task(help={"out": "folder for the tarballs, SHA256SUMS and images.json"})
def images_save(c, out="dist/images"):
    """Save both images as tarballs with SHA256SUMS and load instructions (for air-gapped hosts)."""
    from bevport.cli import run_reporting_errors
    from bevport.convert.images import save_images

    result = run_reporting_errors(save_images, _client(), Path(out), progress=_say)
    _say(f"[green]saved[/] {len(result['images'])} images to {out}")


@task(help={"folder": "a folder written by images.save"})
def images_load(c, folder):
    """Load saved images after checking every tarball's checksum and, after loading, every image ID."""
    from bevport.cli import run_reporting_errors
    from bevport.convert.images import load_images

    records = run_reporting_errors(load_images, _client(), Path(folder), progress=_say)
    _say(f"[green]loaded[/] {', '.join(r['tag'] for r in records)}")


@task(help={"device": "CPU or GPU: the device conversions will use (default: doctor's own)"})
def doctor(c, device=None):
    """Check Docker, the images and their revision, /dev/dri and the render group, devices inside the runtime image."""
    from bevport.convert.doctor import diagnose

    ok = True
    for check in diagnose(**_given(device=device)):
        ok &= check.ok or check.warning
        mark = "[green]ok[/]  " if check.ok else "[yellow]warn[/]" if check.warning else "[red]FAIL[/]"
        _say(f"{mark} {check.name}: {check.detail}" + ("" if check.ok or not check.fix else f"\n      fix: {check.fix}"))
    if not ok:
        raise SystemExit(1)


from invoke import Collection  # noqa: E402  (the namespace is built from the tasks above)

images = Collection("images")
for _name, _task in (("base", images_base), ("build", images_build), ("lock", images_lock), ("save", images_save),
                     ("load", images_load)):
    images.add_task(_task, name=_name)
ns = Collection(synth_ckpt, export, synth_data, calibrate, quantize, infer, validate, bench, convert, bundle,
                verify, parity, demo, test, benchmarks, doctor, images)
