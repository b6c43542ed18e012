"""Test helpers: writers of the files bevport only reads (PCD as ascii or binary_compressed, with its LZF encoder)."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from bevport.data.pcd import DATA_KINDS, pcd_header

_LZF_MAX_OFFSET = 1 << 13
_LZF_MAX_MATCH = 7 + 255 + 2
_LZF_MAX_LITERAL = 32


# ---------------------------------------------------------------------------------------------------------- LZF

def lzf_compress(data: bytes) -> bytes:
    """A greedy LZF encoder (3-byte hash table, latest occurrence wins); bevport.data.pcd.lzf_decompress inverts
    it."""
    data = bytes(data)
    n = len(data)
    out, literals = bytearray(), bytearray()
    table = {}  # type: Dict[bytes, int]
    i = 0
    while i < n:
        length = _match(data, table, i)
        if length:
            _flush_literals(out, literals)
            _emit_reference(out, i - table[data[i:i + 3]] - 1, length)
            table[data[i:i + 3]] = i
            i += length
            continue
        if i + 2 < n:
            table[data[i:i + 3]] = i
        literals.append(data[i])
        i += 1
        if len(literals) == _LZF_MAX_LITERAL:
            _flush_literals(out, literals)
    _flush_literals(out, literals)
    return bytes(out)


def _match(data: bytes, table: Dict[bytes, int], i: int) -> int:
    """Length of the match at i against the last occurrence of its 3 bytes, or 0 when there is none in reach."""
    if i + 2 >= len(data):
        return 0
    ref = table.get(data[i:i + 3])
    if ref is None or i - ref > _LZF_MAX_OFFSET:
        return 0
    limit = min(_LZF_MAX_MATCH, len(data) - i)
    length = 3
    while length < limit and data[ref + length] == data[i + length]:
        length += 1
    return length


def _emit_reference(out: bytearray, offset: int, length: int) -> None:
    code = length - 2
    if code < 7:
        out.append((code << 5) | (offset >> 8))
    else:
        out.append((7 << 5) | (offset >> 8))
        out.append(code - 7)
    out.append(offset & 0xFF)


def _flush_literals(out: bytearray, literals: bytearray) -> None:
    if literals:
        out.append(len(literals) - 1)
        out += literals
        del literals[:]


# ------------------------------------------------------------------------------------------------------------ PCD

def write_pcd(path, points: np.ndarray, fields: Sequence[str] = ("x", "y", "z", "intensity"),
              data: str = "binary") -> None:
    """A PCD v0.7 file of float32 fields, one per column of `points`, as ascii, binary or binary_compressed
    (LZF-compressed, field by field)."""
    points = np.ascontiguousarray(points, "<f4")
    if points.ndim != 2 or points.shape[1] != len(fields):
        raise ValueError(f"points of shape {points.shape} do not match fields {list(fields)}")
    if data not in DATA_KINDS:
        raise ValueError(f"unknown PCD DATA kind {data!r}; use one of {DATA_KINDS}")
    if data == "ascii":
        # 9 significant digits identify a float32 exactly.
        body = "".join(" ".join("%.9g" % v for v in row) + "\n" for row in points.tolist()).encode("ascii")
    elif data == "binary":
        body = points.tobytes()
    else:
        raw = np.ascontiguousarray(points.T).tobytes()
        packed = lzf_compress(raw)
        body = struct.pack("<II", len(packed), len(raw)) + packed
    Path(path).write_bytes(pcd_header(fields, len(points), data) + body)
