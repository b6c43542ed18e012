"""The two images: base images from a Debian mirror, builds through the Docker SDK, and air-gapped save/load.

* `bootstrap_base` makes a base image without any registry: debootstrap a minimal Debian into a folder, pack it
  as a tar with sorted entries and fixed times, and `docker import` it.
* `build_image` sends a build context made here (Dockerfile, lock files, the bevport source, the site CA if any),
  so the build sees exactly those files, with SOURCE_DATE_EPOCH from the last commit and labels naming the git
  revision, the base, the lock files' hashes and the hash of the image's sources (`revision_check` compares it).
* `save_images` writes each image as a tarball plus SHA256SUMS and images.json (tag -> image ID); `load_images`
  refuses a tarball whose checksum, or whose loaded image ID, differs from what was recorded.
* `build_images` / `bootstrap_bases` are what `invoke images.build` / `images.base` run: `base_image` picks what an
  image is built on (`--base-from registry | debian-mirror`); `lock_commands` are the `uv pip compile` runs behind
  `invoke images.lock`, each for its image's Python.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from bevport import __version__
from bevport.convert.runner import IMAGES, RunnerError, image_tag
from bevport.fsutil import atomic_write_bytes, sha256_file

ROOT = Path(__file__).resolve().parents[3]
DOCKER_DIR = ROOT / "docker"
CA_IN_CONTEXT = "ca/site-ca.crt"

KINDS = ("export", "runtime")
# `--base-from debian-mirror`: the Debian suite `images.base` bootstraps for each image (bullseye's python3 is 3.9,
# the closest Debian has to the export image's Python 3.8; bookworm's 3.11 suits the runtime's current OpenVINO).
MIRROR_SUITES = {"export": "bullseye", "runtime": "bookworm"}
BASE_FROM = ("registry", "debian-mirror")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ["ca-certificates"]             # what a bootstrapped base needs before setup-python.sh runs
GPU_RUNTIMES = ("debian", "intel")
# docker/requirements/<name>.in -> <name>.txt, resolved for the Python of the image that installs it.
LOCK_PYTHON = {"export": "3.8", "export-build": "3.8", "export-sources": "3.8", "runtime": "3.11"}
LOCK_PLATFORM = "x86_64-manylinux_2_31"

# Dockerfile stages built and tagged on their own before the image: the export image compiles mmcv-full in `wheels`.
BUILD_STAGES = {"export": ("wheels",)}


def image_kinds(kind: str) -> Tuple[str, ...]:
    """`both` -> both images; `export` or `runtime` -> that one."""
    if kind == "both":
        return KINDS
    if kind not in KINDS:
        raise RunnerError(f"image kind must be export, runtime or both, got {kind!r}")
    return (kind,)


def base_tag(suite: str) -> str:
    """The tag `images.base` gives a bootstrapped Debian suite."""
    return f"bevport-base:{suite}"


def base_image(kind: str, base_from: str = "registry", override: Optional[str] = None) -> Optional[str]:
    """What `kind` is built on: `override` when given; else None for `registry` (the Dockerfile's pinned default) or
    the bootstrapped bevport-base:<suite> for `debian-mirror`."""
    if base_from not in BASE_FROM:
        raise RunnerError(f"--base-from must be registry or debian-mirror, got {base_from!r}")
    if kind not in KINDS:
        raise RunnerError(f"image kind must be export or runtime, got {kind!r}")
    if override:
        return override
    return base_tag(MIRROR_SUITES[kind]) if base_from == "debian-mirror" else None


def image_build_args(kind: str, gpu_runtime: str = "debian", reference_sources: str = "none") -> Dict[str, str]:
    """Build arguments of one image beyond the common ones: the runtime image's GPU driver source, whether the
    export image fetches the pinned training trees."""
    if gpu_runtime not in GPU_RUNTIMES:
        raise RunnerError(f"--gpu-runtime must be debian or intel, got {gpu_runtime!r}")
    if reference_sources not in ("none", "pinned"):
        raise RunnerError(f"--reference-sources must be none or pinned, got {reference_sources!r}")
    if kind == "runtime":
        return {"GPU_RUNTIME": gpu_runtime}
    return {"REFERENCE_SOURCES": reference_sources} if reference_sources != "none" else {}


def lock_commands() -> List[List[str]]:
    """The `uv pip compile` command lines (run from the checkout's root) that regenerate docker/requirements/*.txt
    with hashes: one per .in file, for its image's Python. export.txt comes first because the compile stage's lock
    (export-build) is constrained by it; the source-only lock (export-sources) takes no dependencies."""
    req = Path("docker") / "requirements"
    commands = []
    for name, python in LOCK_PYTHON.items():
        cmd = ["uv", "pip", "compile", str(req / f"{name}.in"), "--python-version", python,
               "--python-platform", LOCK_PLATFORM, "--generate-hashes", "--no-header"]
        if name.endswith("-sources"):
            cmd.append("--no-deps")
        if name == "export-build":
            cmd += ["-c", str(req / "export.txt")]
        commands.append(cmd + ["-o", str(req / f"{name}.txt")])
    return commands


def git_revision(root: Path = ROOT) -> Dict[str, str]:
    """The checkout's commit, its time (SOURCE_DATE_EPOCH) and whether the tree has uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root)] + list(args), capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    epoch = git("log", "-1", "--pretty=%ct") or "0"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"commit": commit, "source_date_epoch": epoch, "dirty": str(dirty).lower()}


def _tar_add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _source_files(root: Path) -> List[Path]:
    """What an image needs of the checkout: the package, its metadata and the recipes (tracked files only)."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "pyproject.toml", "README.md", "src", "recipes"],
                            capture_output=True, text=True).stdout.split()
    return sorted(root / name for name in listed if (root / name).is_file() and not (root / name).is_symlink())


def _context_files(kind: str, root: Path) -> Iterator[Tuple[str, Path, int]]:
    """(name in the context, file, mode) of everything an image is built from, but the site CA."""
    yield "Dockerfile", root / "docker" / f"{kind}.Dockerfile", 0o644
    for path in sorted((root / "docker").rglob("*")):
        if path.is_file() and not path.name.endswith(".Dockerfile"):
            yield f"docker/{path.relative_to(root / 'docker')}", path, 0o755 if os.access(path, os.X_OK) else 0o644
    for path in _source_files(root):
        yield f"src-tree/{path.relative_to(root)}", path, 0o644


def build_context(kind: str, ca_bundle: Optional[Path], mtime: int, root: Path = ROOT) -> bytes:
    """A tar build context: docker/<kind>.Dockerfile as Dockerfile, docker/ helpers and lock files, the source."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path, mode in _context_files(kind, root):
            _tar_add_bytes(tar, name, path.read_bytes(), mtime, mode)
        ca = Path(ca_bundle).read_bytes() if ca_bundle else b""
        _tar_add_bytes(tar, CA_IN_CONTEXT, ca, mtime)          # empty file: no site CA
    return buffer.getvalue()


def source_hash(kind: str, root: Path = ROOT) -> str:
    """sha256 of what decides an image's content (Dockerfile, docker/, locks, package source), without the README:
    an image stays current across commits that change only docs, tests or CI."""
    digest = hashlib.sha256()
    for name, path, mode in _context_files(kind, root):
        if name != "src-tree/README.md":
            digest.update(f"{name}\0{mode:o}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def lock_hash(kind: str, root: Path = ROOT) -> str:
    path = root / "docker" / "requirements" / f"{kind}.txt"
    return sha256_file(path) if path.is_file() else "none"


def build_args(kind: str, base: Optional[str], revision: Dict[str, str]) -> Dict[str, Optional[str]]:
    return {"BASE_IMAGE": base, "SOURCE_DATE_EPOCH": revision["source_date_epoch"],
            "GIT_REVISION": revision["commit"], "LOCK_SHA256": lock_hash(kind)}


def labels(kind: str, base: str, revision: Dict[str, str]) -> Dict[str, str]:
    return {"org.opencontainers.image.title": IMAGES[kind],
            "org.opencontainers.image.revision": revision["commit"],
            "org.opencontainers.image.base.name": base,
            "io.bevport.tree-dirty": revision["dirty"],
            "io.bevport.source-sha256": source_hash(kind),
            f"io.bevport.lock.{kind}.sha256": lock_hash(kind)}


def build_image(client, kind: str, base: Optional[str], ca_bundle: Optional[Path] = None,
                progress: Callable[[str], None] = lambda m: None, extra_args: Optional[Dict[str, str]] = None) -> str:
    """Build bevport-<kind>:<version> from `base` (None: the Dockerfile's digest-pinned default); streams the build
    log to `progress`; returns the image ID."""
    revision = git_revision()
    context = build_context(kind, ca_bundle, int(revision["source_date_epoch"]))
    args = build_args(kind, base, revision)
    args.update(extra_args or {})
    buildargs = {k: v for k, v in args.items() if v is not None}
    # The compile stage gets a tag of its own (bevport-<kind>-build): visible, removable on purpose, and the layer
    # cache of mmcv-full's compile, instead of a 2.5 GB untagged image.
    stages = [(stage, f"{IMAGES[kind]}-build:{__version__}") for stage in BUILD_STAGES.get(kind, ())]
    stages.append((None, image_tag(kind)))
    before = {tag: _image_id(client, tag) for _, tag in stages}   # what each tag named before this build
    for target, tag in stages:
        stream = client.api.build(fileobj=io.BytesIO(context), custom_context=True, tag=tag, target=target,
                                  buildargs=buildargs, labels=labels(kind, base or "dockerfile default", revision),
                                  rm=True, decode=True)
        for chunk in stream:
            if "error" in chunk:
                raise RunnerError(f"building {tag} failed: {chunk['error'].strip()}",
                                  "see the lines above; behind a TLS-intercepting proxy pass --ca-bundle FILE")
            if chunk.get("stream", "").strip():
                progress(chunk["stream"].rstrip())
    unlabelled = _image_id(client, image_tag(kind))
    image_id = label_interpreter(client, kind)
    current = {_image_id(client, tag) for _, tag in stages} | {image_id}
    for superseded in (set(before.values()) | {unlabelled}) - current - {None}:
        _remove_if_untagged(client, superseded)
    return image_id


def _image_id(client, tag: str) -> Optional[str]:
    import docker

    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        return None


def _remove_if_untagged(client, image_id: str) -> None:
    """Drop an image this build superseded, once nothing names it (it keeps the layers others share)."""
    import docker

    try:
        if not client.images.get(image_id).tags:
            client.images.remove(image_id)
    except (docker.errors.ImageNotFound, docker.errors.APIError):   # in use by a container, or already gone
        pass


def build_images(client, kind: str = "both", base_from: str = "registry", ca_bundle: Optional[Path] = None,
                 gpu_runtime: str = "debian", bases: Optional[Dict[str, Optional[str]]] = None,
                 progress: Callable[[str], None] = lambda m: None, reference_sources: str = "none") -> Dict[str, str]:
    """Build the export and/or runtime image (`kind`: export, runtime or both) on the bases `base_from` selects,
    `bases` overriding one image's base by name; returns {kind: image ID}. Everything is checked before the first
    build starts."""
    kinds = image_kinds(kind)
    chosen = {k: base_image(k, base_from, (bases or {}).get(k)) for k in kinds}
    extra = {k: image_build_args(k, gpu_runtime, reference_sources) for k in kinds}
    return {k: build_image(client, k, chosen[k], ca_bundle, progress, extra[k] or None) for k in kinds}


def label_interpreter(client, kind: str) -> str:
    """Record the Python the image got (3.8 from python:3.8, 3.9 from Debian bullseye) as io.bevport.python: a
    label-only build on top of the image (no new layer)."""
    tag = image_tag(kind)
    version = client.containers.run(tag, ["cat", "/etc/bevport-python-version"], remove=True).decode().strip()
    dockerfile = f"FROM {tag}\nLABEL io.bevport.python={version}\n".encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        _tar_add_bytes(tar, "Dockerfile", dockerfile, 0)
    for chunk in client.api.build(fileobj=io.BytesIO(context.getvalue()), custom_context=True, tag=tag, rm=True,
                                  decode=True):
        if "error" in chunk:
            raise RunnerError(f"labelling {tag} failed: {chunk['error'].strip()}")
    return client.images.get(tag).id


def bootstrap_base(client, suite: str, mirror: str, tag: str, workdir: Path, packages: List[str],
                   progress: Callable[[str], None] = lambda m: None) -> str:
    """debootstrap a minimal Debian `suite` and import it as image `tag` (needs root and the debootstrap tool)."""
    rootfs = Path(workdir) / f"rootfs-{suite}"
    if not (rootfs / "etc" / "debian_version").is_file():
        if shutil.which("debootstrap") is None:
            raise RunnerError("debootstrap is not installed on this host (images.base bootstraps Debian with it)",
                              "`sudo apt-get install debootstrap` (Debian/Ubuntu), then run `invoke images.base` "
                              "again as root")
        progress(f"debootstrap {suite} from {mirror}")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(rootfs), mirror]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RunnerError(f"debootstrap {suite} failed: {done.stderr.strip().splitlines()[-1:]}",
                              "it needs root, the debootstrap package and a reachable Debian mirror (--mirror)")
    progress(f"importing {rootfs} as {tag}")
    data = _rootfs_tar(rootfs)
    repository, _, version = tag.partition(":")
    client.api.import_image_from_data(data, repository=repository, tag=version or "latest",
                                      changes=['ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
                                               'CMD ["/bin/bash"]'])
    return client.images.get(tag).id


def bootstrap_bases(client, workdir: Path, suites: Optional[List[str]] = None, mirror: str = DEBIAN_MIRROR,
                    force: bool = False, progress: Callable[[str], None] = lambda m: None) -> Dict[str, Optional[str]]:
    """bevport-base:<suite> for each suite (default: the ones `--base-from debian-mirror` builds on); a base that is
    already there is kept unless `force`. Returns {tag: new image ID, or None where the present one was kept}."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    made = {}
    for suite in suites or list(dict.fromkeys(MIRROR_SUITES.values())):
        tag = base_tag(suite)
        if client.images.list(name=tag) and not force:
            progress(f"base {tag} present (--force rebuilds it)")
            made[tag] = None
            continue
        made[tag] = bootstrap_base(client, suite, mirror, tag, Path(workdir), BASE_PACKAGES, progress)
    return made


def _rootfs_tar(rootfs: Path) -> bytes:
    """The root filesystem as a tar with sorted entries and clamped times, so the same tree imports identically."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [rootfs] + sorted(rootfs.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)) or ".")
            info.mtime = min(int(info.mtime), epoch) if epoch else int(info.mtime)
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- save / load

def save_images(client, out: Path, kinds=("export", "runtime"),
                progress: Callable[[str], None] = lambda m: None) -> Dict:
    """<out>/<image>.tar per image, SHA256SUMS, images.json (tag, ID, file) and LOAD.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records, sums = [], []
    for kind in kinds:
        image = client.images.get(image_tag(kind))
        name = f"{IMAGES[kind]}-{image_tag(kind).split(':')[1]}.tar"
        progress(f"saving {image_tag(kind)} -> {out / name}")
        digest = hashlib.sha256()
        tmp = out / f".{name}.part"
        with open(tmp, "wb") as f:
            for chunk in image.save(named=True):
                f.write(chunk)
                digest.update(chunk)
        os.replace(tmp, out / name)
        records.append({"tag": image_tag(kind), "id": image.id, "file": name, "sha256": digest.hexdigest()})
        sums.append(f"{digest.hexdigest()}  {name}\n")
    atomic_write_bytes(out / "SHA256SUMS", "".join(sums).encode())
    atomic_write_bytes(out / "images.json", (json.dumps({"images": records}, indent=2) + "\n").encode())
    atomic_write_bytes(out / "LOAD.md", _load_instructions(records).encode())
    return {"images": records}


def _load_instructions(records: List[Dict]) -> str:
    lines = ["# Loading the bevport images on a host without a registry", "",
             "With this checkout: `invoke images.load <this folder>` (checks SHA256SUMS and the image IDs).", "",
             "By hand:", "", "```", "sha256sum -c SHA256SUMS"]
    lines += [f"docker load -i {r['file']}" for r in records]
    lines += ["docker image inspect --format '{{.Id}}' " + " ".join(r["tag"] for r in records), "```", "",
              "The IDs must be:", ""] + [f"- `{r['tag']}`: `{r['id']}`" for r in records]
    return "\n".join(lines) + "\n"


def load_images(client, folder: Path, progress: Callable[[str], None] = lambda m: None) -> List[Dict]:
    """Verify every tarball against SHA256SUMS, load it, and check the loaded image ID against images.json."""
    folder = Path(folder)
    index = folder / "images.json"
    if not index.is_file():
        raise RunnerError(f"{folder}: no images.json; this is not an `invoke images.save` folder")
    records = json.loads(index.read_text())["images"]
    sums = _read_sums(folder / "SHA256SUMS")
    for record in records:
        path = folder / record["file"]
        actual = sha256_file(path) if path.is_file() else None
        expected = sums.get(record["file"])
        if actual is None or actual != expected or actual != record["sha256"]:
            raise RunnerError(f"{path}: checksum {'missing file' if actual is None else actual} does not match "
                              f"SHA256SUMS ({expected})", "the tarball is damaged or was replaced: copy it again")
    for record in records:
        progress(f"loading {record['file']}")
        with open(folder / record["file"], "rb") as f:          # streamed: the export image is 3 GB
            loaded = client.images.load(f)
        ids = {image.id for image in loaded}
        if record["id"] not in ids:
            raise RunnerError(f"{record['file']} loaded as {sorted(ids)}, not the recorded image {record['id']}",
                              "the tarball does not hold the image images.json names; save it again")
    return records


def _read_sums(path: Path) -> Dict[str, str]:
    if not path.is_file():
        raise RunnerError(f"{path} is missing", "copy the whole folder `invoke images.save` wrote")
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(None, 1)
            sums[name.strip().lstrip("*")] = digest
    return sums


def revision_check(client, kind: str, root: Path = ROOT) -> Optional[str]:
    """A warning when the image was built from other sources than this checkout's (None when they match; a commit
    that changed only docs, tests or CI does not count)."""
    image = client.images.get(image_tag(kind))
    labels_ = image.labels or {}
    if labels_.get("io.bevport.source-sha256") == source_hash(kind, root):
        return None
    built = labels_.get("org.opencontainers.image.revision", "unknown")
    current = git_revision(root)["commit"]
    return (f"{image_tag(kind)} was built from revision {built[:12]}, whose image sources differ from this "
            f"checkout ({current[:12]}): rebuild with `invoke images.build`")
