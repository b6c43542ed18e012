"""Canonical JSON and the rule that separates a report's stable facts from its run-dependent ("volatile") fields.

A field is volatile, and is moved out of a bundled report, when its key (compared in lower case)

- names a timing block whose whole subtree is wall-clock figures: `latency`, `throughput`, `stream`, `timings`;
- ends with a time, rate or memory unit: `_ms`, `_s`, `seconds` (so also `_seconds`), `fps`, `_mib`,
  `_time`, `timestamp`; or contains `speedup` (a ratio of two timings); or is `non_model_share` (idem);
- names a local path: `path`, `folder`, `bundle`, `root`, `recipe_origin`, `cache_dir`, `workspace`, or ends
  with `_path`, `_dir`, `_folder`;

or when its value is a string holding an absolute path (`/...`, `~/...`, `C:\\...`), wherever it sits in a mapping.
(Paths inside longer strings, as in an error message, are left alone; list items are never removed.)

`split_volatile` returns the report without those fields and the removed values keyed by JSON Pointer (RFC 6901),
so nothing is lost: the bundle keeps the stable part, `<name>.timings.json` beside the archive keeps the rest.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, Tuple

VOLATILE_BLOCKS = frozenset({"latency", "throughput", "stream", "timings"})
VOLATILE_SUFFIXES = ("_ms", "_s", "seconds", "fps", "_mib", "_time", "timestamp")
VOLATILE_PARTS = ("speedup",)
VOLATILE_NAMES = frozenset({"non_model_share"})
PATH_KEYS = frozenset({"path", "folder", "bundle", "root", "recipe_origin", "cache_dir", "workspace"})
PATH_SUFFIXES = ("_path", "_dir", "_folder")
_ABSOLUTE = re.compile(r"^(/|~/|~$|[A-Za-z]:[\\/]|\\\\)")


def is_volatile_key(key: str) -> bool:
    k = str(key).lower()
    return (k in VOLATILE_BLOCKS or k in VOLATILE_NAMES or k in PATH_KEYS or k.endswith(VOLATILE_SUFFIXES)
            or k.endswith(PATH_SUFFIXES) or any(part in k for part in VOLATILE_PARTS))


def is_absolute_path(value: Any) -> bool:
    return isinstance(value, str) and bool(_ABSOLUTE.match(value))


def _escape(key: str) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def split_volatile(data: Any, pointer: str = "") -> Tuple[Any, Dict[str, Any]]:
    """(`data` without its volatile fields, {JSON pointer: removed value})."""
    removed: Dict[str, Any] = {}
    if isinstance(data, dict):
        kept = {}
        for key, value in data.items():
            here = f"{pointer}/{_escape(key)}"
            if is_volatile_key(key) or is_absolute_path(value):
                removed[here] = value
                continue
            kept[key], inner = split_volatile(value, here)
            removed.update(inner)
        return kept, removed
    if isinstance(data, list):
        items = []
        for index, value in enumerate(data):
            item, inner = split_volatile(value, f"{pointer}/{index}")
            items.append(item)
            removed.update(inner)
        return items, removed
    return data, removed


def canonical_json(data: Any) -> bytes:
    """One byte form per value: sorted keys, two-space indent, fixed separators, ASCII, trailing newline."""
    text = json.dumps(data, sort_keys=True, indent=2, separators=(",", ": "), ensure_ascii=True)
    return (text + "\n").encode("ascii")
