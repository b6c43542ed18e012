"""Atomic outputs: a step writes into a temporary sibling and moves it into place only when it succeeded."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from bevport.errors import BevportError


class BusyError(BevportError):
    """A folder another run holds."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_created(path: Path, mode: int) -> None:
    # mkstemp/mkdtemp create 0600/0700; a finished output gets the permissions open() or mkdir() would give it.
    os.chmod(path, mode & ~_umask())


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _as_created(Path(tmp), 0o666)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output_dir(out: os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `out`; on success it replaces `out`, on any failure it is removed.

    An existing `out` stays untouched until the new contents are complete, so a failed run never leaves a
    half-written folder and never destroys the previous good one.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        _as_created(tmp, 0o777)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


LOCK_NAME = ".bevport.lock"


@contextlib.contextmanager
def folder_lock(folder: os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (a `.bevport.lock` file in it) or raise BusyError at once. The operating
    system drops the lock when its holder exits, even by SIGKILL, so a killed run never blocks the next one."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise BusyError(f"{folder} is in use by {holder}",
                            "wait for that run to finish, or give this one another folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_leftovers(folder: os.PathLike, name: str = "*") -> int:
    """Remove the temporary siblings (`.<name>.*.tmp`, `.<name>.*.old`) that interrupted atomic writes of `name`
    (default: of anything) left in `folder`; returns how many. Only safe where no running writer owns such names
    (inside `folder_lock`, or for a name only this run writes)."""
    count = 0
    for path in Path(folder).glob(f".{name}.*"):
        if path.suffix in (".tmp", ".old"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            count += 1
    return count


def sha256_file(path: os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
