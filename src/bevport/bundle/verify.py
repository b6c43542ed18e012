"""`verify_bundle`: re-hash every file a bundle's manifest lists; report missing, changed and unlisted files."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List

from bevport.bundle.archive import BundleError, safe_extract
from bevport.bundle.build import FORMAT, FORMAT_VERSION, MANIFEST, _fail, _read_json
from bevport.fsutil import sha256_file


def _safe_relative(rel: Any) -> bool:
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and all(part not in ("..", ".", "") for part in rel.split("/"))


def _check_folder(root: Path, shown: str) -> Dict[str, Any]:
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{shown}: no {MANIFEST}; this is not a bevport release bundle",
                          "pass the dist/<name> folder or dist/<name>.tar.gz written by `bevport bundle`")
    manifest = _read_json(manifest_path)
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{shown}: {MANIFEST} is not a bevport bundle manifest")
    if not isinstance(manifest.get("format_version"), int) or manifest["format_version"] > FORMAT_VERSION:
        raise BundleError(f"{shown}: bundle format {manifest.get('format_version')} is newer than this bevport "
                          f"understands ({FORMAT_VERSION})", "upgrade bevport")
    missing: List[str] = []
    changed: List[str] = []
    unsafe: List[str] = []
    listed = set()
    for rel, entry in sorted(manifest["files"].items()):
        if not _safe_relative(rel) or rel == MANIFEST or not isinstance(entry, dict):
            unsafe.append(str(rel))
            continue
        listed.add(rel)
        path = root.joinpath(*rel.split("/"))
        if path.is_symlink() or not path.is_file():
            missing.append(rel)
            continue
        size = path.stat().st_size
        if size != entry.get("size") or sha256_file(path) != entry.get("sha256"):
            changed.append(rel)
    unlisted = []
    for folder, dirs, names in os.walk(root):
        for name in sorted(dirs + names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or (not path.is_dir() and rel not in listed and rel != MANIFEST):
                unlisted.append(rel)
    report = {"bundle": shown, "name": manifest.get("name"), "recipe": manifest.get("recipe"),
              "checkpoint_sha256": manifest.get("checkpoint_sha256"), "files": len(listed),
              "missing": missing, "changed": changed, "unlisted": sorted(unlisted), "invalid_entries": unsafe}
    problems = [f"changed: {r}" for r in changed] + [f"missing: {r}" for r in missing] + \
               [f"unlisted: {r}" for r in report["unlisted"]] + [f"invalid manifest entry: {r}" for r in unsafe]
    report["ok"] = not problems
    if problems:
        _fail(f"{shown} does not verify ({len(problems)} problem(s))", problems,
              "the bundle was modified or damaged after it was built; rebuild it or fetch it again")
    return report


def verify_bundle(path: os.PathLike) -> Dict[str, Any]:
    """Check a bundle folder or its .tar.gz against its manifest. Returns the findings; raises BundleError (naming
    the first few problems) when a listed file is missing or changed, or a file is not listed."""
    path = Path(path)
    if path.is_dir():
        return _check_folder(path, str(path))
    if not path.is_file():
        raise BundleError(f"bundle not found: {path}", "pass a dist/<name> folder or a dist/<name>.tar.gz")
    with tempfile.TemporaryDirectory(prefix="bevport-verify-") as tmp:
        root = safe_extract(path, Path(tmp))
        return _check_folder(root, str(path))
