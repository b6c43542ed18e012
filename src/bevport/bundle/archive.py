"""Deterministic .tar.gz of a folder, and extraction that refuses anything but plain files and folders inside it.

The archive is a function of the folder's relative paths and file bytes only: entries in sorted path order (a folder
before its contents), PAX format, every mtime set to one fixed value, uid/gid 0 with empty owner names, mode 0755 for
folders and 0644 for files, and a gzip header with mtime 0 and no file name.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import List, Optional, Tuple

from bevport.errors import BevportError

DIR_MODE = 0o755
FILE_MODE = 0o644
COMPRESSLEVEL = 6


class BundleError(BevportError):
    """A bundle that cannot be built, or that does not verify; `problems` lists every finding."""

    def __init__(self, message: str, hint: Optional[str] = None, problems: Optional[List[str]] = None):
        super().__init__(message, hint)
        self.problems = list(problems or [])


def default_mtime() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible-builds convention), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    try:
        mtime = int(value)
    except ValueError:
        raise BundleError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds",
                           "set it to e.g. $(git log -1 --format=%ct), or unset it") from None
    if mtime < 0:
        raise BundleError(f"SOURCE_DATE_EPOCH={value} is negative")
    return mtime


def tree_entries(root: Path) -> List[Tuple[str, Path]]:
    """(relative POSIX path, path) of every folder and file below `root`, sorted by relative path."""
    entries = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        for name in dirs + files:
            path = base / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise BundleError(f"{path}: not a plain file or folder; a bundle holds nothing else")
            entries.append((path.relative_to(root).as_posix(), path))
    return sorted(entries)


def _info(name: str, size: int, is_dir: bool, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size = 0 if is_dir else size
    info.mode = DIR_MODE if is_dir else FILE_MODE
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(folder: Path, out: Path, mtime: int = 0) -> None:
    """`out` (.tar.gz) holding `folder` under its own name."""
    folder = Path(folder)
    top = folder.name
    with open(out, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=COMPRESSLEVEL) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info(top, 0, True, mtime))
        for rel, path in tree_entries(folder):
            name = f"{top}/{rel}"
            if path.is_dir():
                tar.addfile(_info(name, 0, True, mtime))
            else:
                with open(path, "rb") as f:
                    tar.addfile(_info(name, os.fstat(f.fileno()).st_size, False, mtime), f)


def _check_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    name = member.name
    path = PurePosixPath(name)
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise BundleError(f"{archive}: member `{name}` has an absolute or non-POSIX path; refusing to extract it")
    if any(part in ("..", "") for part in name.rstrip("/").split("/")):
        raise BundleError(f"{archive}: member `{name}` points outside the archive (`..`); refusing to extract it")
    if not (member.isreg() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise BundleError(f"{archive}: member `{name}` is a {kind}; a bundle holds only files and folders")
    return path


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a bundle archive into `dest` after checking every member; returns its one top-level folder."""
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            paths = [_check_member(m, archive) for m in members]
            tops = {p.parts[0] for p in paths if p.parts and p.parts[0] != "."}
            if len(tops) != 1:
                raise BundleError(f"{archive}: expected one top-level folder, found {len(tops)}"
                                   f"{': ' + ', '.join(sorted(tops)[:5]) if tops else ''}")
            seen = set()
            for member, path in zip(members, paths):
                key = path.as_posix()
                if key in seen:
                    raise BundleError(f"{archive}: member `{member.name}` appears twice")
                seen.add(key)
                target = dest.joinpath(*path.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(target, "xb") as f:
                    shutil.copyfileobj(source, f, 1 << 20)
    except FileExistsError as exc:
        raise BundleError(f"{archive}: member `{exc.filename}` collides with another member") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BundleError(f"{archive}: not a readable .tar.gz ({exc})") from None
    return dest / tops.pop()

