"""`invoke doctor`: what a conversion on this host needs, each check with its fix when it fails."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from bevport.convert.runner import RunnerError, docker_client, image_tag, render_group

MIN_FREE_GB = 30    # two images (~8 GB), a 300-frame calibration set (~15 GB), the bundle


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: Optional[str] = None
    warning: bool = False       # not ok, but a conversion still works (e.g. an image from older sources)


# What to run when an image is missing: a registry build, a registry-free build, or a saved image.
BUILD_FIX = ("`invoke images.build` where the base images' registry is reachable; without a registry "
             "`invoke images.base` (root, `apt-get install debootstrap`) then `invoke images.build --base-from "
             "debian-mirror`; on an air-gapped host `invoke images.load <folder>`; behind a TLS-intercepting proxy add "
             "`--ca-bundle <site CA file>`")


def diagnose(device: str = "CPU", workdir: Path = Path(".")) -> Iterator[Check]:
    """Checks for a conversion on `device` (CPU, the default of `invoke convert`, or GPU: then also /dev/dri, the
    render group and the GPU inside the runtime image)."""
    client = None
    try:
        client = docker_client()
        yield Check("docker engine", True, client.version().get("Version", "reachable"))
    except RunnerError as exc:
        yield Check("docker engine", False, exc.message, exc.hint)
    if client is not None:
        yield from _images(client)
    if device.upper().startswith("GPU"):
        yield from _gpu_access()
    if client is not None and client.images.list(name=image_tag("runtime").split(":")[0]):
        yield _devices_in_runtime(client, device)
    free = shutil.disk_usage(str(workdir)).free / 1e9
    yield Check("disk space", free >= MIN_FREE_GB, f"{free:.0f} GB free in {Path(workdir).resolve()}",
                f"a 300-frame conversion needs about {MIN_FREE_GB} GB: free space or use --work on a larger disk")


def _images(client) -> Iterator[Check]:
    import docker

    from bevport.convert.images import revision_check

    for kind in ("export", "runtime"):
        try:
            image = client.images.get(image_tag(kind))
        except docker.errors.ImageNotFound:
            yield Check(f"{kind} image", False, f"{image_tag(kind)} not found", BUILD_FIX)
            continue
        stale = revision_check(client, kind)
        yield Check(f"{kind} image", stale is None, stale or f"{image_tag(kind)} {image.short_id}, built from this "
                    "checkout's sources", warning=stale is not None)


def _gpu_access() -> Iterator[Check]:
    dri = Path("/dev/dri")
    if not dri.is_dir():
        yield Check("/dev/dri", False, "no /dev/dri on this host",
                    "install the Intel GPU kernel driver (i915 or xe), or convert and validate with --device CPU")
        return
    group = render_group(dri)
    if group is None:
        yield Check("/dev/dri", False, "no render node (renderD*) in /dev/dri", "load the i915/xe driver")
        return
    member = os.getuid() == 0 or group in os.getgroups()
    yield Check("render group", member, f"render nodes belong to group {group}",
                f"`sudo usermod -aG {group} $USER` (the render group), then log in again")


def _devices_in_runtime(client, device: str) -> Check:
    import docker

    args = {"devices": ["/dev/dri:/dev/dri"], "group_add": [str(render_group())]} if render_group() else {}
    script = "import openvino as ov; print(' '.join(ov.Core().available_devices))"
    try:
        out = client.containers.run(image_tag("runtime"), ["python", "-c", script], remove=True, **args)
    except (docker.errors.ImageNotFound, docker.errors.ContainerError, docker.errors.APIError) as exc:
        return Check("OpenVINO devices in the runtime image", False, str(exc).splitlines()[0],
                     BUILD_FIX)
    seen = out.decode().split()
    wanted = device.upper().split(".")[0]
    return Check("OpenVINO devices in the runtime image", any(d.startswith(wanted) for d in seen),
                 f"sees {', '.join(seen) or 'none'}",
                 "the GPU needs /dev/dri, the render group and the compute runtime (GPU_RUNTIME build argument)")
