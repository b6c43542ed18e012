"""Point clouds: PCD (ascii, binary, binary_compressed) and KITTI velodyne .bin, as float32 [N, F] arrays.

`read_pcd` keeps every field as a float32 column in header order, as the training loader does (DAIR-V2X-I files
hold x y z intensity, sometimes a timestamp too); a COUNT > 1 field becomes that many columns. Rows are kept as read.
binary_compressed data is LZF-compressed and stored field by field (all values of field 0, then field 1, ...).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from bevport.errors import DatasetError

DATA_KINDS = ("ascii", "binary", "binary_compressed")
_TYPES = {("F", 2): "<f2", ("F", 4): "<f4", ("F", 8): "<f8",
          ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4", ("I", 8): "<i8",
          ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8"}


# ---------------------------------------------------------------------------------------------------------- LZF

def lzf_decompress(data: bytes, out_size: int) -> bytes:
    """Decode an LZF stream; ValueError if it is corrupt or does not decode to exactly `out_size` bytes."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            end = i + ctrl + 1
            if end > n:
                raise ValueError("literal run past the end of the compressed data")
            out += data[i:end]
            i = end
            continue
        length = ctrl >> 5
        if length == 7:
            if i >= n:
                raise ValueError("back-reference length past the end of the compressed data")
            length += data[i]
            i += 1
        if i >= n:
            raise ValueError("back-reference offset past the end of the compressed data")
        length += 2
        start = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        if start < 0:
            raise ValueError("back-reference before the start of the output")
        _copy_reference(out, start, length)
    if len(out) != out_size:
        raise ValueError(f"decompressed to {len(out)} bytes, expected {out_size}")
    return bytes(out)


def _copy_reference(out: bytearray, start: int, length: int) -> None:
    period = len(out) - start
    if length <= period:
        out += out[start:start + length]
    else:  # the reference overlaps what it writes: its bytes repeat with the period of the offset
        pattern = out[start:]
        out += (pattern * (length // period + 1))[:length]


# ------------------------------------------------------------------------------------------------------- header

def _header_lines(path: Path, raw: bytes) -> Tuple[Dict[str, List[str]], int]:
    """The header's `KEY values` lines and the offset where the data starts (after the DATA line)."""
    header = {}  # type: Dict[str, List[str]]
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        end = len(raw) if end < 0 else end
        try:
            line = raw[pos:end].decode("ascii").strip()
        except UnicodeDecodeError:
            break
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        words = line.split()
        header[words[0].upper()] = words[1:]
        if words[0].upper() == "DATA":
            return header, pos
    raise DatasetError(f"{path}: PCD header has no DATA line", "is this a PCD file? Its header must end with `DATA ...`")


def _ints(path: Path, header: Dict[str, List[str]], key: str, default=None) -> List[int]:
    if key not in header:
        if default is not None:
            return default
        raise DatasetError(f"{path}: PCD header has no {key} line", "write the PCD with a complete v0.7 header")
    try:
        return [int(v) for v in header[key]]
    except ValueError:
        raise DatasetError(f"{path}: PCD header line {key} {' '.join(header[key])} is not integers",
                           "write the PCD with a complete v0.7 header") from None


def _layout(path: Path, header: Dict[str, List[str]]):
    """(structured dtype with one entry per field, number of points, DATA kind)."""
    fields = header.get("FIELDS")
    if not fields:
        raise DatasetError(f"{path}: PCD header has no FIELDS", "write the PCD with a complete v0.7 header")
    sizes = _ints(path, header, "SIZE")
    types = [t.upper() for t in header.get("TYPE", [])]
    counts = _ints(path, header, "COUNT", [1] * len(fields))
    if not len(sizes) == len(types) == len(counts) == len(fields):
        raise DatasetError(f"{path}: PCD header has {len(fields)} FIELDS but {len(sizes)} SIZE, {len(types)} TYPE "
                           f"and {len(counts)} COUNT values", "every field needs one SIZE, TYPE and COUNT")
    entries = []
    for k, (name, size, kind, count) in enumerate(zip(fields, sizes, types, counts)):
        code = _TYPES.get((kind, size))
        if code is None or count < 1:
            raise DatasetError(f"{path}: PCD field `{name}` has TYPE {kind} SIZE {size} COUNT {count}",
                               "supported: TYPE F (size 2/4/8), I or U (size 1/2/4/8), COUNT >= 1")
        entries.append((f"f{k}", code, (count,)))
    n = _point_count(path, header)
    kind = (header["DATA"] or [""])[0].lower()
    if kind not in DATA_KINDS:
        raise DatasetError(f"{path}: unknown PCD DATA kind `{kind}`", f"supported: {', '.join(DATA_KINDS)}")
    return np.dtype(entries), n, kind


def _point_count(path: Path, header: Dict[str, List[str]]) -> int:
    """POINTS, or WIDTH x HEIGHT when POINTS is absent; the two must agree when both are given."""
    size = _ints(path, header, "WIDTH", [-1]) + _ints(path, header, "HEIGHT", [1])
    if len(size) != 2 and "POINTS" not in header:
        raise DatasetError(f"{path}: PCD header WIDTH/HEIGHT lines are malformed", "each holds one integer")
    area = size[0] * size[1] if size[0] >= 0 else None
    points = _ints(path, header, "POINTS", [area] if area is not None else None)
    if len(points) != 1 or points[0] < 0 or (area is not None and len(size) == 2 and area != points[0]):
        raise DatasetError(f"{path}: PCD header says POINTS {' '.join(map(str, points))} but WIDTH x HEIGHT is "
                           f"{' x '.join(map(str, size))}", "POINTS must equal WIDTH * HEIGHT")
    return points[0]


# --------------------------------------------------------------------------------------------------------- read

def _width(field: np.dtype) -> int:
    """Columns a field contributes: its COUNT."""
    return int(np.prod(field.shape, dtype=np.int64))


def _columns(record: np.ndarray) -> np.ndarray:
    """A structured array (one entry per field, each [count]) as float32 [N, sum(counts)]."""
    parts = [record[name].reshape(len(record), _width(record.dtype[name])).astype(np.float32)
             for name in record.dtype.names]
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(record), 0), np.float32)


def _read_ascii(path: Path, body: bytes, dtype: np.dtype, n: int) -> np.ndarray:
    columns = sum(_width(dtype[name]) for name in dtype.names)
    rows = [line.split() for line in body.decode("ascii", "replace").splitlines() if line.strip()]
    if len(rows) < n:
        raise DatasetError(f"{path}: PCD data is truncated: {len(rows)} of {n} points",
                           "the file was cut short; copy or convert it again")
    rows = rows[:n]
    bad = next((k for k, r in enumerate(rows) if len(r) != columns), None)
    if bad is not None:
        raise DatasetError(f"{path}: PCD point {bad} has {len(rows[bad])} values, expected {columns}",
                           "each ascii data line holds one value per field (x COUNT)")
    try:
        return np.array(rows, np.float64).astype(np.float32).reshape(n, columns)
    except ValueError:
        raise DatasetError(f"{path}: PCD ascii data holds a value that is not a number",
                           "the file is corrupt; convert it again") from None


def _read_binary(path: Path, body: bytes, dtype: np.dtype, n: int) -> np.ndarray:
    if len(body) < n * dtype.itemsize:
        raise DatasetError(f"{path}: PCD data is truncated: {len(body)} bytes for {n} points of {dtype.itemsize}",
                           "the file was cut short; copy or convert it again")
    return _columns(np.frombuffer(body, dtype, count=n))


def _read_compressed(path: Path, body: bytes, dtype: np.dtype, n: int) -> np.ndarray:
    if len(body) < 8:
        raise DatasetError(f"{path}: PCD binary_compressed data is truncated (no size words)",
                           "the file was cut short; copy or convert it again")
    packed, unpacked = struct.unpack("<II", body[:8])
    if len(body) - 8 < packed:
        raise DatasetError(f"{path}: PCD data is truncated: {len(body) - 8} of {packed} compressed bytes",
                           "the file was cut short; copy or convert it again")
    if unpacked != n * dtype.itemsize:
        raise DatasetError(f"{path}: PCD binary_compressed holds {unpacked} bytes, {n} points need "
                           f"{n * dtype.itemsize}", "the header and the data disagree; convert the file again")
    try:
        raw = lzf_decompress(body[8:8 + packed], unpacked)
    except ValueError as e:
        raise DatasetError(f"{path}: PCD binary_compressed data is corrupt ({e})", "convert the file again") from None
    columns, offset = [], 0
    for name in dtype.names:  # field-major: every value of one field, then the next field
        field = dtype[name]
        size = n * field.itemsize
        values = np.frombuffer(raw, field.base, count=n * _width(field), offset=offset)
        columns.append(values.reshape(n, _width(field)).astype(np.float32))
        offset += size
    return np.concatenate(columns, axis=1) if columns else np.zeros((n, 0), np.float32)


_READERS = {"ascii": _read_ascii, "binary": _read_binary, "binary_compressed": _read_compressed}


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}", "every image needs a matching velodyne/<id> file") from None
    except OSError as e:
        raise DatasetError(f"cannot read {what} {path}: {e}", "check the file's permissions") from None


def read_pcd(path: os.PathLike) -> np.ndarray:
    """Every field of a PCD file as float32 columns in header order, [N, F]."""
    path = Path(path)
    raw = _read_bytes(path, "point cloud")
    header, start = _header_lines(path, raw)
    dtype, n, kind = _layout(path, header)
    return _READERS[kind](path, raw[start:], dtype, n)


def read_bin(path: os.PathLike, dims: int = 4) -> np.ndarray:
    """A KITTI velodyne .bin: float32 x `dims` per point, [N, dims]."""
    path = Path(path)
    raw = _read_bytes(path, "point cloud")
    if len(raw) % (4 * dims):
        raise DatasetError(f"{path}: {len(raw)} bytes is not a whole number of points of {dims} float32",
                           f"a velodyne .bin holds {dims} float32 per point; the file is truncated or has "
                           "another point layout")
    return np.frombuffer(raw, "<f4").reshape(-1, dims).astype(np.float32)


# -------------------------------------------------------------------------------------------------------- write

def pcd_header(fields: Sequence[str], n: int, data: str = "binary") -> bytes:
    """The PCD v0.7 header of `n` points of float32 `fields`, ending with the line `DATA <data>`."""
    k = len(fields)
    return ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
            f"FIELDS {' '.join(fields)}\nSIZE {' '.join(['4'] * k)}\nTYPE {' '.join(['F'] * k)}\n"
            f"COUNT {' '.join(['1'] * k)}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n"
            ).encode("ascii")


def pcd_bytes(points: np.ndarray, fields: Sequence[str] = ("x", "y", "z", "intensity")) -> bytes:
    """A binary PCD v0.7 file of float32 fields, one per column of `points`."""
    points = np.ascontiguousarray(points, "<f4")
    if points.ndim != 2 or points.shape[1] != len(fields):
        raise ValueError(f"points of shape {points.shape} do not match fields {list(fields)}")
    return pcd_header(fields, len(points)) + points.tobytes()
