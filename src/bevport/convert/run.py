"""One conversion: preflight checks, the runner (Docker or local), the resumable steps, and the release bundle."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Callable, Dict, Optional

from bevport import __version__
from bevport.convert.plan import ConvertRequest, mounts, plan, preflight
from bevport.convert.runner import DockerRunner, LocalRunner, Mounts, docker_client, image_tag
from bevport.convert.steps import Step, run_steps
from bevport.fsutil import atomic_write_bytes, folder_lock, remove_leftovers, sha256_file
from bevport.recipe import DEFAULT_RECIPE


def resolve_runner(kind: str, progress: Callable[[str], None] = lambda m: None) -> str:
    """auto -> docker when an engine answers and both images are there, local otherwise (saying why)."""
    if kind not in ("auto", "docker", "local"):
        raise ValueError(f"runner must be auto, docker or local, got {kind!r}")
    return _docker_if_ready(progress) if kind == "auto" else kind


def make_runner(kind: str, req: ConvertRequest, ca_bundle: Optional[Path] = None,
                progress: Callable[[str], None] = lambda m: None):
    kind = resolve_runner(kind, progress)
    if kind == "local":
        return LocalRunner()
    if kind == "docker":
        client = docker_client()
        _warn_about_stale_images(client, progress)
        return DockerRunner(client, mounts(req), gpu=req.device.upper().startswith("GPU"), ca_bundle=ca_bundle)


def _warn_about_stale_images(client, progress: Callable[[str], None]) -> None:
    import docker

    from bevport.convert.images import revision_check

    for kind in ("export", "runtime"):
        try:
            stale = revision_check(client, kind)
        except docker.errors.ImageNotFound:  # reported, with its fix, when the first step needs the image
            continue
        if stale:
            progress(f"warning: {stale}")


def _docker_if_ready(progress: Callable[[str], None]) -> str:
    """docker when an engine answers and both images are there; local otherwise (and say why)."""
    try:
        client = docker_client()
        for kind in ("export", "runtime"):
            client.images.get(image_tag(kind))
        return "docker"
    except Exception as exc:  # no SDK, no engine, no image: all mean the same here
        progress(f"running locally ({getattr(exc, 'message', None) or str(exc).splitlines()[0]})")
        return "local"


def synthetic_checkpoint(out: Path, runner_kind: str, recipe: str = DEFAULT_RECIPE, seed: Optional[int] = None,
                         trained: bool = False) -> Path:
    """A built-in checkpoint: the trained demo weights (`trained`) or seeded random ones. With Docker it is composed
    in the export image, so a host with only Docker and invoke (no torch) can run the demo. The untrained tensors'
    BatchNorm statistics are measured with a forward pass, so torch 1.11 (image) and a current torch (host) can
    differ in their last bits."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["synth-ckpt", "--recipe", recipe, "--out", out, "-q"] + (["--trained"] if trained else []) + \
        ([] if seed is None else ["--seed", seed])
    step = Step("synth-ckpt", "export", argv, {}, [out], {"recipe": recipe, "seed": seed, "trained": trained})
    runner = (LocalRunner() if resolve_runner(runner_kind) == "local"
              else DockerRunner(docker_client(), Mounts({"/work": (out.parent, "rw")})))
    run_steps([step], out.parent / ".bevport", runner)    # its step record and log, out of the way
    return out


def environment(runner) -> Dict:
    """What built the bundle: the runner and, for Docker, the two images' IDs and labels (base digest, interpreter,
    lock-file hashes, git revision)."""
    if runner.name == "local":
        return {"runner": "local", "python": platform.python_version(), "bevport": __version__,
                "packages": _local_versions()}
    out = {"runner": "docker", "bevport": __version__, "images": {}}
    for kind in ("export", "runtime"):
        image = runner.client.images.get(image_tag(kind))
        out["images"][kind] = {"tag": image_tag(kind), "id": image.id, "labels": image.labels or {}}
    return out


def _local_versions() -> Dict[str, str]:
    versions = {}
    for name in ("numpy", "openvino", "nncf", "onnx", "torch", "scipy", "PIL"):
        try:
            versions[name] = str(__import__(name).__version__)
        except (ImportError, AttributeError):
            continue
    return versions


def bundle_name(req: ConvertRequest) -> str:
    """`<recipe>-<checkpoint sha256[:12]>`, the name `bevport bundle` gives the release."""
    from bevport.recipe import load_recipe

    return f"{load_recipe(req.recipe, req.config).name}-{sha256_file(req.ckpt)[:12]}"


def bundle_step(req: ConvertRequest, environment_file: Path) -> Step:
    w = req.work
    inputs = {"ir": w / "ir" / "quantize.json", "validate": w / "validate.json", "environment": environment_file}
    parity = []
    if req.source and req.backend == "native":
        parity = ["--parity-reference", w / "parity-reference.json"]
        inputs["parity_reference"] = w / "parity-reference.json"
    return Step("bundle", "runtime",
                ["bundle", "--recipe", req.recipe, "--onnx", w / "onnx", "--ir", w / "ir", "--validate",
                 w / "validate.json", "--bench", w / "bench.json", "--vis", w / "vis", "--environment",
                 environment_file, "--dist", req.dist, "-q"] + parity,
                inputs, [req.dist / f"{bundle_name(req)}.tar.gz"])


def run_convert(req: ConvertRequest, runner_kind: str = "docker", force: bool = False,
                ca_bundle: Optional[Path] = None, progress: Callable[[str], None] = lambda m: None) -> Dict:
    """The whole conversion. One run at a time per work folder (a lock); a run killed earlier (even by SIGKILL) left
    at most temporary siblings of the outputs it was writing, which are removed before the steps resume."""
    preflight(req)
    runner = make_runner(runner_kind, req, ca_bundle, progress)
    with folder_lock(req.work):
        req.dist.mkdir(parents=True, exist_ok=True)
        # In dist only this bundle's own leftovers: other work folders may be writing other bundles there.
        if remove_leftovers(req.work) + remove_leftovers(req.dist, bundle_name(req)):
            progress("removed what an interrupted run left half-written")
        env_file = req.work / "environment.json"
        atomic_write_bytes(env_file, (json.dumps(environment(runner), indent=2, sort_keys=True) + "\n").encode())
        steps = plan(req) + [bundle_step(req, env_file)]
        return run_steps(steps, req.work, runner, force=force, progress=progress)


def run_parity(ckpt: Path, source: Path, out: Path, runner_kind: str = "auto", recipe: str = DEFAULT_RECIPE,
               config: Optional[Path] = None, onnx: Optional[Path] = None, data: Optional[Path] = None,
               progress: Callable[[str], None] = lambda m: None) -> Path:
    """`bevport parity --source` where the training tree can be imported: the export image (tree mounted read-only
    at /src), or this environment when it has mmcv and mmdet (`--runner local`)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    req = ConvertRequest(Path(ckpt), out.parent, out.parent, recipe=recipe, config=config, source=Path(source),
                         data=Path(data) if data else None)
    preflight(req)
    pinned = str(source) == "pinned"
    argv = ["parity", "--recipe", recipe, "--ckpt", req.ckpt, "--source", "pinned" if pinned else req.source,
            "--out", out, "-q"] + \
        (["--config", req.config] if req.config else []) + (["--onnx", Path(onnx)] if onnx else []) + \
        (["--data", req.data] if req.data else [])
    table = dict(mounts(req).table)
    if onnx:
        table["/in/onnx"] = (Path(onnx), "ro")
    inputs = dict({"ckpt": req.ckpt}, **({} if pinned else {"source": req.source}))
    step = Step("parity", "export", argv, dict(inputs, **({"onnx": Path(onnx)} if onnx else {})), [out])
    runner = (LocalRunner() if resolve_runner(runner_kind, progress) == "local"
              else DockerRunner(docker_client(), Mounts({k: v for k, v in table.items() if k != "/out"})))
    run_steps([step], out.parent / ".bevport", runner, force=True, progress=progress)
    return out
