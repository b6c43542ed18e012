"""Where a step's `bevport` command runs: this Python environment, or a container of the export/runtime image.

The Docker runner mounts `/in` (checkpoint and config, read-only), `/data` (dataset, read-only), `/work` (the run's
workspace) and `/out` (the dist folder), runs as the calling user so that no file comes out root-owned, and for an
Intel GPU passes `/dev/dri` and the group that owns its render node.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from bevport import __version__
from bevport.convert.steps import Step
from bevport.errors import BevportError

CA_PATH = "/etc/ssl/certs/bevport-site-ca.pem"
IMAGES = {"export": "bevport-export", "runtime": "bevport-runtime"}


class RunnerError(BevportError):
    pass


def image_tag(kind: str, version: str = __version__) -> str:
    return f"{IMAGES[kind]}:{version}"


class LocalRunner:
    name = "local"

    def image_id(self, kind: str) -> Optional[str]:
        return None

    def host_view(self, text: str) -> str:
        return text

    def command(self, step: Step) -> List[str]:
        return [sys.executable, "-m", "bevport"] + [str(a) for a in step.argv]

    def run(self, step: Step, log: Path) -> int:
        with open(log, "wb") as out:
            return subprocess.run(self.command(step), stdout=out, stderr=subprocess.STDOUT).returncode


class Mounts:
    """Host folders -> container folders; translates every path of a command into the container's view."""

    def __init__(self, table: Dict[str, Tuple[Path, str]]):
        self.table = {target: (Path(host).resolve(), mode) for target, (host, mode) in table.items()}

    def volumes(self) -> Dict[str, Dict[str, str]]:
        return {str(host): {"bind": target, "mode": mode} for target, (host, mode) in self.table.items()}

    def translate(self, value) -> str:
        if not isinstance(value, Path):
            return str(value)
        path = value.resolve()
        for target, (host, _) in sorted(self.table.items(), key=lambda item: -len(str(item[1][0]))):
            if path == host or host in path.parents:
                return str(Path(target) / path.relative_to(host))
        raise RunnerError(f"{value} is outside the folders mounted into the container "
                          f"({', '.join(str(h) for h, _ in self.table.values())})")

    def to_host(self, text: str) -> str:
        """`text` (a container's messages) with every mounted container path written as the host path it is."""
        for target in sorted(self.table, key=len, reverse=True):
            pattern = r"(?<![\w./-])" + re.escape(target) + r"(?=/|[^\w.-]|$)"
            text = re.sub(pattern, lambda _, host=str(self.table[target][0]): host, text)
        return text


def render_group(dri: Path = Path("/dev/dri")) -> Optional[int]:
    nodes = sorted(dri.glob("renderD*")) if dri.is_dir() else []
    return nodes[0].stat().st_gid if nodes else None


class DockerRunner:
    name = "docker"

    def __init__(self, client, mounts: Mounts, gpu: bool = False, ca_bundle: Optional[Path] = None,
                 user: Optional[str] = None):
        self.client = client
        self.mounts = mounts
        self.gpu = gpu
        self.ca_bundle = Path(ca_bundle) if ca_bundle else None
        self.user = user or f"{os.getuid()}:{os.getgid()}"

    def image_id(self, kind: str) -> str:
        import docker

        try:
            return self.client.images.get(image_tag(kind)).id
        except docker.errors.ImageNotFound:
            raise RunnerError(f"Docker image {image_tag(kind)} is not on this host",
                              "build it with `invoke images.build`, or load a saved one with `invoke images.load`") \
                from None

    def run_kwargs(self, step: Step) -> Dict:
        """Everything handed to `containers.run` for this step (what the tests check)."""
        volumes = self.mounts.volumes()
        environment = {"HOME": "/work/.home", "BEVPORT_CACHE": "/work/.cache", "PYTHONUNBUFFERED": "1"}
        if self.ca_bundle is not None:
            volumes[str(self.ca_bundle.resolve())] = {"bind": CA_PATH, "mode": "ro"}
            environment.update(SSL_CERT_FILE=CA_PATH, REQUESTS_CA_BUNDLE=CA_PATH, PIP_CERT=CA_PATH)
        kwargs = {"image": image_tag(step.image), "command": ["bevport"] + [self.mounts.translate(a) for a in step.argv],
                  "user": self.user, "volumes": volumes, "environment": environment, "working_dir": "/work",
                  "detach": True}
        if self.gpu:
            group = render_group()
            if group is None:
                raise RunnerError("--device GPU: /dev/dri has no render node on this host",
                                  "install the Intel GPU driver, or run with --device CPU; `invoke doctor` checks")
            kwargs.update(devices=["/dev/dri:/dev/dri"], group_add=[str(group)])
        return kwargs

    def host_view(self, text: str) -> str:
        """Container messages with the user's paths instead of /in, /data, /work, /out."""
        return self.mounts.to_host(text)

    def run(self, step: Step, log: Path) -> int:
        container = self.client.containers.run(**self.run_kwargs(step))
        try:
            with open(log, "wb") as out:
                for chunk in container.logs(stream=True, follow=True):
                    out.write(chunk)
            return int(container.wait()["StatusCode"])
        finally:
            container.remove(force=True)


def docker_client():
    """The Docker engine from the environment (DOCKER_HOST or the default socket), with the fix when unreachable."""
    try:
        import docker
    except ImportError:
        raise RunnerError("the Docker SDK for Python is not installed", "pip install docker, or use --runner local") \
            from None
    try:
        client = docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        reason = str(exc)
        if "Permission denied" in reason:
            raise RunnerError(f"no permission on the Docker socket ({reason})",
                              "add yourself to the docker group (`sudo usermod -aG docker $USER`, then log in "
                              "again), or use --runner local") from None
        raise RunnerError(f"no Docker engine reachable ({reason})",
                          "start it (`sudo systemctl start docker`, or `dockerd &` as root), or use --runner local") \
            from None
