"""invoke tasks: thin wrappers that resolve paths and call the `bevport` CLI (all logic lives in the package)."""
from __future__ import annotations

import sys
from pathlib import Path

from invoke import task

ROOT = Path(__file__).resolve().parent
PY = sys.executable


@task(help={"seed": "generator seed", "out": "checkpoint to write",
            "runner": "auto (the export image when Docker is ready), docker or local"})
def synth_ckpt(c, seed=0, out="work/demo/synthetic_seed0.pth", recipe="v2xfusion-pp-r34", runner="auto"):
    """Write the deterministic synthetic checkpoint (the built-in default); with Docker the host needs no torch."""
    from bevport.cli import console, run_reporting_errors
    from bevport.convert.run import synthetic_checkpoint

    path = run_reporting_errors(synthetic_checkpoint, Path(out), runner, recipe, int(seed))
    console.print(f"synthetic checkpoint (seed {seed}): {path}", highlight=False)


@task(help={"ckpt": "training checkpoint (.pth)", "config": "upstream training config (optional)",
            "out": "output folder", "sparsity": "apply 2:4 sparsity masks"})
def export(c, ckpt, out="work/onnx", recipe="v2xfusion-pp-r34", config=None, sparsity=False):
    """Checkpoint -> the deploy graphs as ONNX, with an OpenVINO parity check (runs in this Python env)."""
    extra = (f" --config {config}" if config else "") + (" --sparsity" if sparsity else "")
    c.run(f"{PY} -m bevport export --recipe {recipe} --ckpt {ckpt} --out {out}{extra}", pty=sys.stdout.isatty())


@task(help={"frames": "number of scenes", "seed": "generator seed", "out": "dataset folder (KITTI layout)"})
def synth_data(c, frames=40, seed=0, out="work/demo/scenes"):
    """Write deterministic synthetic roadside scenes (the built-in default dataset)."""
    c.run(f"{PY} -m bevport synth-data --frames {frames} --seed {seed} --out {out} --overwrite",
          pty=sys.stdout.isatty())


@task(help={"onnx": "export folder", "data": "dataset root (default: synthetic scenes)",
            "num_samples": "calibration frames", "holdout": "held-out frames for the report", "out": "output folder"})
def calibrate(c, onnx="work/onnx", data=None, num_samples=None, holdout=None, out="work/calib",
              recipe="v2xfusion-pp-r34"):
    """Run the FP32 graphs over dataset frames and store each graph's inputs (the calibration set)."""
    extra = "".join(f" --{flag} {value}" for flag, value in
                    (("data", data), ("num-samples", num_samples), ("holdout", holdout)) if value is not None)
    c.run(f"{PY} -m bevport calibrate --recipe {recipe} --onnx {onnx} --out {out}{extra}", pty=sys.stdout.isatty())


@task(help={"onnx": "export folder", "calib": "calibration set", "out": "IR folder"})
def quantize(c, onnx="work/onnx", calib="work/calib", out="work/ir", recipe="v2xfusion-pp-r34"):
    """NNCF INT8 quantization of the four graphs, FP32 IRs and the drift/latency report."""
    c.run(f"{PY} -m bevport quantize --recipe {recipe} --onnx {onnx} --calib {calib} --out {out}",
          pty=sys.stdout.isatty())


def _runtime(c, command, bundle, data, device, extra):
    data_arg = f" --data {data}" if data else ""
    c.run(f"{PY} -m bevport {command} --bundle {bundle}{data_arg} --device {device}{extra}", pty=sys.stdout.isatty())


@task(help={"bundle": "IR folder or release bundle", "data": "dataset (default: synthetic scenes)",
            "device": "CPU, GPU, AUTO ...", "vis": "write pictures and a video"})
def infer(c, bundle="work/ir", data=None, device="CPU", vis=False, preds="work/preds"):
    """Run frames through the bundle: predictions (deploy + KITTI formats), AP when labels exist, pictures."""
    _runtime(c, "infer", bundle, data, device, f" --pred-dir {preds}" + (" --vis-dir work/vis --video" if vis else ""))


@task(help={"bundle": "IR folder or release bundle", "data": "dataset", "device": "OpenVINO device"})
def validate(c, bundle="work/ir", data=None, device="CPU"):
    """Compile every IR on the device and compare FP32 with INT8 on held-out frames -> validate.json."""
    _runtime(c, "validate", bundle, data, device, "")


@task(help={"bundle": "IR folder or release bundle", "data": "dataset", "device": "OpenVINO device"})
def benchmark(c, bundle="work/ir", data=None, device="CPU"):
    """Per-stage latency and FPS, FP32 vs INT8 -> bench.json (`invoke bench` runs the benchmark scripts)."""
    _runtime(c, "bench", bundle, data, device, "")


@task(help={"onnx": "export folder", "ir": "IR folder quantized from it", "validate": "validate.json (optional)",
            "bench": "bench.json (optional)", "vis": "pictures folder (optional)", "dist": "release folder"})
def bundle(c, onnx="work/onnx", ir="work/ir", validate=None, bench=None, vis=None, dist="dist",
           recipe="v2xfusion-pp-r34"):
    """Pack ONNX + IRs (+ reports) into dist/<recipe>-<ckpt sha256[:12]>/ and a deterministic .tar.gz."""
    extra = "".join(f" --{flag} {value}" for flag, value in
                    (("validate", validate), ("bench", bench), ("vis", vis)) if value is not None)
    c.run(f"{PY} -m bevport bundle --recipe {recipe} --onnx {onnx} --ir {ir} --dist {dist}{extra}",
          pty=sys.stdout.isatty())


@task(positional=["path"], help={"path": "dist/<name> or dist/<name>.tar.gz"})
def verify(c, path):
    """Re-check every hash of a release bundle against its manifest."""
    c.run(f"{PY} -m bevport verify {path}", pty=sys.stdout.isatty())


@task(help={"ckpt": "training checkpoint (.pth)", "data": "dataset root (default: synthetic scenes)",
            "config": "upstream training config", "runner": "docker (default) or local", "device": "CPU or GPU",
            "num_samples": "calibration frames", "force": "redo finished steps", "ca_bundle": "site CA for containers",
            "allow_drift": "report FP32-vs-INT8 drift beyond the recipe's bounds instead of failing"})
def convert(c, ckpt, data=None, config=None, recipe="v2xfusion-pp-r34", runner="docker", device="CPU",
            num_samples=300, holdout=8, work="work/convert", dist="dist", force=False, ca_bundle=None,
            sparsity=False, allow_drift=False):
    """Checkpoint -> ONNX -> calibration -> INT8 IRs -> validation -> release bundle in dist/ (resumable steps)."""
    from bevport.cli import console, run_reporting_errors
    from bevport.convert.plan import ConvertRequest
    from bevport.convert.run import run_convert

    req = ConvertRequest(Path(ckpt), Path(work), Path(dist), recipe, Path(config) if config else None,
                         Path(data) if data else None, device, int(num_samples), int(holdout), sparsity, allow_drift)
    outcome = run_reporting_errors(run_convert, req, runner, force, Path(ca_bundle) if ca_bundle else None,
                                   progress=lambda m: console.print(f"[dim]convert:[/] {m}"))
    console.print(f"[green]converted[/] ({', '.join(f'{k} {v}' for k, v in outcome.items())}) -> {dist}")


@task(help={"runner": "auto (Docker when an engine and the images are there), docker or local",
            "frames": "synthetic calibration frames"})
def demo(c, work="work/demo", runner="auto", frames=16):
    """The main job on built-in defaults: synthetic checkpoint + synthetic scenes through convert to a bundle."""
    from bevport.cli import console, run_reporting_errors
    from bevport.convert.run import resolve_runner, synthetic_checkpoint

    runner = resolve_runner(runner, progress=lambda m: console.print(f"[dim]demo:[/] {m}"))
    ckpt = run_reporting_errors(synthetic_checkpoint, Path(work, "synthetic_seed0.pth"), runner)
    # A random-weight checkpoint cannot meet the recipe's FP32-vs-INT8 bounds: validation reports instead of failing.
    convert(c, ckpt=str(ckpt), runner=runner, num_samples=frames, holdout=2, work=f"{work}/convert",
            dist=f"{work}/dist", allow_drift=True)
    bundle = sorted(Path(work, "dist").glob("*.tar.gz"))[-1]
    picture = sorted(Path(work, "convert", "vis").glob("frame_*.png"))[0]
    console.print(f"bundle: {bundle}\npicture: {picture}", highlight=False)


@task(help={"slow": "run only the slow end-to-end tests", "docker": "run only the Docker end-to-end test",
            "k": "pytest -k expression"})
def test(c, slow=False, docker=False, k=None):
    """The test suite CI runs (fast); --slow runs the end-to-end tests marked slow; --docker the Docker one."""
    marker = ["-m", "slow"] if slow else ["-m", "docker"] if docker else []
    args = ["-q"] + marker + (["-k", f"'{k}'"] if k else [])
    c.run(f"{PY} -m pytest {' '.join(args)}", pty=sys.stdout.isatty())


@task
def bench(c):
    """Export, geometry, calibrate+quantize and inference benchmarks -> benchmarks/results/*.json."""
    c.run(f"{PY} benchmarks/export.py")
    c.run(f"{PY} benchmarks/pool.py")
    with c.cd("benchmarks"):
        c.run(f"{PY} quantize.py --out results/quantize.json")
        c.run(f"{PY} infer.py --out results/infer.json")


# --------------------------------------------------------------------------------------------- images.* and doctor

def _client():
    from bevport.cli import run_reporting_errors
    from bevport.convert.runner import docker_client

    return run_reporting_errors(docker_client)


def _say(message: str) -> None:
    from bevport.cli import console

    console.print(message, highlight=False)


@task(help={"mirror": "Debian mirror", "suites": "comma list of Debian suites to bootstrap"})
def images_base(c, mirror="http://deb.debian.org/debian", suites="bullseye,bookworm", workdir="work/rootfs",
                force=False):
    """Base images without a registry: debootstrap Debian and `docker import` it as bevport-base:<suite> (root)."""
    from bevport.cli import run_reporting_errors
    from bevport.convert.images import bootstrap_base

    client = _client()
    Path(workdir).mkdir(parents=True, exist_ok=True)
    for suite in suites.split(","):
        if client.images.list(name=f"bevport-base:{suite}") and not force:
            _say(f"base bevport-base:{suite} present (--force rebuilds it)")
            continue
        image = run_reporting_errors(bootstrap_base, client, suite, mirror, f"bevport-base:{suite}", Path(workdir),
                                     ["ca-certificates"], progress=_say)
        _say(f"[green]base[/] bevport-base:{suite} {image}")


@task(help={"kind": "export, runtime or both", "ca_bundle": "site CA bundle to trust inside the build",
            "base_from": "registry (digest-pinned defaults) or debian-mirror (bevport-base:* from images.base)",
            "gpu_runtime": "debian or intel (runtime image)"})
def images_build(c, kind="both", ca_bundle=None, base_from="registry", export_base=None, runtime_base=None,
                 gpu_runtime="debian"):
    """Build the export and/or runtime image with the Docker SDK (streamed log)."""
    from bevport.cli import run_reporting_errors
    from bevport.convert.images import build_image

    mirror = base_from == "debian-mirror"
    bases = {"export": export_base or ("bevport-base:bullseye" if mirror else None),
             "runtime": runtime_base or ("bevport-base:bookworm" if mirror else None)}
    client = _client()
    for name in (("export", "runtime") if kind == "both" else (kind,)):
        image = run_reporting_errors(build_image, client, name, bases[name], Path(ca_bundle) if ca_bundle else None,
                                     progress=lambda line: print(line, flush=True),
                                     extra_args={"GPU_RUNTIME": gpu_runtime} if name == "runtime" else None)
        _say(f"[green]built[/] {name}: {image}")


@task
def images_lock(c):
    """Regenerate docker/requirements/*.txt with hashes from the .in files (uv pip compile, per target Python)."""
    targets = {"export": "3.8", "export-build": "3.8", "export-sources": "3.8", "runtime": "3.11"}
    for name, python in targets.items():
        extra = " --no-deps" if name.endswith("sources") else ""
        extra += " -c docker/requirements/export.txt" if name == "export-build" else ""
        c.run(f"uv pip compile docker/requirements/{name}.in --python-version {python} "
              f"--python-platform x86_64-manylinux_2_31 --generate-hashes --no-header{extra} "
              f"-o docker/requirements/{name}.txt")


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


@task
def doctor(c, device="GPU"):
    """Check Docker, the images and their revision, /dev/dri and the render group, devices inside the runtime image."""
    from bevport.convert.doctor import diagnose

    ok = True
    for check in diagnose(device):
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
ns = Collection(synth_ckpt, export, synth_data, calibrate, quantize, infer, validate, benchmark, convert, bundle,
                verify, demo, test, bench, doctor, images)
