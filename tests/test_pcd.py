"""PCD / BIN readers and the LZF codec, on small files each test writes by hand."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from bevport.data.pcd import lzf_decompress, read_bin, read_pcd
from bevport.errors import DatasetError
from helpers import lzf_compress, write_pcd


def header(fields, sizes, types, counts, n, data, width=None):
    return (f"# .PCD v0.7\nVERSION 0.7\nFIELDS {' '.join(fields)}\nSIZE {' '.join(map(str, sizes))}\n"
            f"TYPE {' '.join(types)}\nCOUNT {' '.join(map(str, counts))}\nWIDTH {n if width is None else width}\n"
            f"HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n").encode("ascii")


def literal_only_lzf(data: bytes) -> bytes:
    """An LZF stream of literal runs only: independent of lzf_compress."""
    out = bytearray()
    for i in range(0, len(data), 32):
        chunk = data[i:i + 32]
        out.append(len(chunk) - 1)
        out += chunk
    return bytes(out)


# Mixed types and a COUNT 2 field: x y z (F4), intensity (U1), ring (U2), t (F8 x 2) -> 7 columns.
MIXED = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("i", "u1"), ("ring", "<u2"), ("t", "<f8", (2,))])
MIXED_HEADER = (["x", "y", "z", "intensity", "ring", "t"], [4, 4, 4, 1, 2, 8], ["F", "F", "F", "U", "U", "F"],
                [1, 1, 1, 1, 1, 2])


def mixed_points():
    rec = np.zeros(3, MIXED)
    rec["x"], rec["y"], rec["z"] = [1.5, -2.25, 3.0], [0.5, 0.25, -1.0], [-0.125, 2.0, 7.5]
    rec["i"], rec["ring"] = [0, 128, 255], [1, 40, 65535]
    rec["t"] = [[0.5, 1.0], [2.0, 3.5], [1e6, -4.0]]
    expected = np.array([[1.5, 0.5, -0.125, 0, 1, 0.5, 1.0], [-2.25, 0.25, 2.0, 128, 40, 2.0, 3.5],
                         [3.0, -1.0, 7.5, 255, 65535, 1e6, -4.0]], np.float32)
    return rec, expected


# ------------------------------------------------------------------------------------------------------------ LZF

def test_lzf_decompresses_literals_and_overlapping_references():
    stream = (b"\x02abc"          # literal run of 3
              b"\x60\x00"         # length 3+2=5 at offset 1: overlapping, repeats 'c'
              b"\xe0\x03\x07"     # length 7+3+2=12 at offset 8: overlapping, repeats the 8 bytes so far
              b"\x02xyz"          # literal run of 3
              b"\x20\x02")        # length 1+2=3 at offset 3: a plain copy
    expected = b"abcccccc" + b"abccccccabcc" + b"xyzxyz"
    assert lzf_decompress(stream, len(expected)) == expected


@pytest.mark.parametrize("stream, size", [(b"\x20\x00", 3),          # reference before any output
                                          (b"\x05ab", 6),            # literal run past the end
                                          (b"\x02abc", 4)])          # decodes to the wrong size
def test_lzf_rejects_corrupt_streams(stream, size):
    with pytest.raises(ValueError):
        lzf_decompress(stream, size)


@pytest.mark.parametrize("data", [np.random.RandomState(0).bytes(3000), b"abcabcabd" * 500 + b"tail",
                                  bytes(np.random.RandomState(1).randint(0, 3, 5000).astype(np.uint8)),
                                  b"", b"a", b"ab", b"\x00" * 1000],
                         ids=["random", "repetitive", "three-symbols", "empty", "one", "two", "zeros"])
def test_lzf_round_trip(data):
    packed = lzf_compress(data)
    assert lzf_decompress(packed, len(data)) == data


def test_lzf_compresses_repetitive_data():
    data = b"0123456789" * 1000
    assert len(lzf_compress(data)) < len(data) // 20


# ------------------------------------------------------------------------------------------------------------ PCD

def test_ascii_pcd(tmp_path):
    path = tmp_path / "a.pcd"
    path.write_bytes(header(["x", "y", "z", "intensity"], [4] * 4, ["F"] * 4, [1] * 4, 2, "ascii")
                     + b"1.5 -2 3.25 0.5\n\n-1e-3 4 5 255\n")
    points = read_pcd(path)
    assert points.dtype == np.float32
    np.testing.assert_array_equal(points, np.array([[1.5, -2, 3.25, 0.5], [-1e-3, 4, 5, 255]], np.float32))


def test_ascii_pcd_with_timestamp_keeps_five_columns(tmp_path):
    path = tmp_path / "ts.pcd"
    path.write_bytes(header(["x", "y", "z", "intensity", "timestamp"], [4, 4, 4, 4, 8], ["F"] * 5, [1] * 5, 2,
                            "ascii") + b"1 2 3 0.5 1626155128.1\n4 5 6 0.25 1626155128.2\n")
    points = read_pcd(path)
    assert points.shape == (2, 5)
    np.testing.assert_array_equal(points[:, 3], [0.5, 0.25])
    assert points[0, 4] == np.float32(1626155128.1)


def test_binary_pcd_mixed_types_and_counts(tmp_path):
    rec, expected = mixed_points()
    path = tmp_path / "b.pcd"
    path.write_bytes(header(*MIXED_HEADER, len(rec), "binary") + rec.tobytes())
    np.testing.assert_array_equal(read_pcd(path), expected)


def test_binary_compressed_pcd_is_field_major(tmp_path):
    rec, expected = mixed_points()
    raw = b"".join(np.ascontiguousarray(rec[name]).tobytes() for name in MIXED.names)
    packed = literal_only_lzf(raw)
    path = tmp_path / "c.pcd"
    path.write_bytes(header(*MIXED_HEADER, len(rec), "binary_compressed") + struct.pack("<II", len(packed), len(raw))
                     + packed)
    np.testing.assert_array_equal(read_pcd(path), expected)


@pytest.mark.parametrize("kind", ["ascii", "binary", "binary_compressed"])
def test_writer_round_trip(tmp_path, kind):
    points = np.random.RandomState(2).randn(500, 5).astype(np.float32) * 50
    points[::7, 3] = 0.0
    path = tmp_path / f"{kind}.pcd"
    write_pcd(path, points, ("x", "y", "z", "intensity", "timestamp"), kind)
    assert f"DATA {kind}\n".encode() in path.read_bytes()[:400]
    back = read_pcd(path)
    assert back.dtype == np.float32 and back.shape == (500, 5)
    np.testing.assert_array_equal(back, points)


def test_pcd_keeps_nan_rows(tmp_path):
    points = np.array([[np.nan] * 4, [1, 2, 3, 4]], np.float32)
    write_pcd(tmp_path / "n.pcd", points)
    back = read_pcd(tmp_path / "n.pcd")
    assert back.shape == (2, 4) and np.isnan(back[0]).all()


def test_points_falls_back_to_width_times_height(tmp_path):
    text = header(["x", "y", "z"], [4] * 3, ["F"] * 3, [1] * 3, 1, "ascii").replace(b"POINTS 1\n", b"")
    (tmp_path / "w.pcd").write_bytes(text + b"1 2 3\n")
    assert read_pcd(tmp_path / "w.pcd").shape == (1, 3)


def expect_error(path, *words):
    with pytest.raises(DatasetError) as info:
        read_pcd(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message
    return message


def test_truncated_binary_pcd(tmp_path):
    path = tmp_path / "t.pcd"
    path.write_bytes(header(["x", "y", "z", "intensity"], [4] * 4, ["F"] * 4, [1] * 4, 10, "binary") + b"\0" * 100)
    expect_error(path, "truncated")


def test_truncated_ascii_pcd(tmp_path):
    path = tmp_path / "t.pcd"
    path.write_bytes(header(["x", "y", "z", "intensity"], [4] * 4, ["F"] * 4, [1] * 4, 3, "ascii") + b"1 2 3 4\n")
    expect_error(path, "truncated")


def test_truncated_compressed_pcd(tmp_path):
    path = tmp_path / "t.pcd"
    write_pcd(path, np.random.RandomState(3).randn(50, 4).astype(np.float32), data="binary_compressed")
    path.write_bytes(path.read_bytes()[:-20])
    expect_error(path, "truncated")


def test_compressed_size_mismatch(tmp_path):
    path = tmp_path / "m.pcd"
    raw = np.zeros((5, 4), np.float32).tobytes()
    packed = literal_only_lzf(raw)
    path.write_bytes(header(["x", "y", "z", "intensity"], [4] * 4, ["F"] * 4, [1] * 4, 6, "binary_compressed")
                     + struct.pack("<II", len(packed), len(raw)) + packed)
    expect_error(path, "6 points")


def test_unknown_data_kind(tmp_path):
    path = tmp_path / "u.pcd"
    path.write_bytes(header(["x"], [4], ["F"], [1], 1, "binary_lz4") + b"\0" * 4)
    expect_error(path, "binary_lz4")


def test_header_without_data_line(tmp_path):
    path = tmp_path / "h.pcd"
    path.write_bytes(b"VERSION 0.7\nFIELDS x y z\n")
    expect_error(path, "DATA")


def test_header_with_inconsistent_sizes(tmp_path):
    path = tmp_path / "s.pcd"
    path.write_bytes(header(["x", "y", "z"], [4, 4], ["F"] * 3, [1] * 3, 1, "ascii") + b"1 2 3\n")
    expect_error(path, "SIZE")


def test_unsupported_type(tmp_path):
    path = tmp_path / "f1.pcd"
    path.write_bytes(header(["x"], [1], ["F"], [1], 1, "binary") + b"\0")
    expect_error(path, "TYPE F SIZE 1")


def test_points_disagree_with_width(tmp_path):
    path = tmp_path / "p.pcd"
    path.write_bytes(header(["x"], [4], ["F"], [1], 2, "ascii", width=3) + b"1\n2\n")
    expect_error(path, "WIDTH")


def test_ascii_row_with_wrong_value_count(tmp_path):
    path = tmp_path / "r.pcd"
    path.write_bytes(header(["x", "y"], [4, 4], ["F", "F"], [1, 1], 2, "ascii") + b"1 2\n3\n")
    expect_error(path, "point 1")


# ------------------------------------------------------------------------------------------------------------ BIN

def test_read_bin(tmp_path):
    points = np.arange(20, dtype=np.float32).reshape(5, 4)
    (tmp_path / "p.bin").write_bytes(points.tobytes())
    np.testing.assert_array_equal(read_bin(tmp_path / "p.bin"), points)
    np.testing.assert_array_equal(read_bin(tmp_path / "p.bin", dims=5), points.reshape(4, 5))


def test_bin_with_partial_point(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(np.zeros(7, np.float32).tobytes())
    with pytest.raises(DatasetError) as info:
        read_bin(path)
    assert str(path) in str(info.value) and "28 bytes" in str(info.value)


@pytest.mark.parametrize("kind", ["ascii", "binary", "binary_compressed"])
def test_zero_point_pcd_reads_as_empty(tmp_path, kind):
    write_pcd(tmp_path / "e.pcd", np.zeros((0, 4), np.float32), data=kind)
    assert read_pcd(tmp_path / "e.pcd").shape == (0, 4)


def test_data_package_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys\nimport bevport.data, bevport.data.pcd, bevport.data.kitti, bevport.data.dair, "
            "bevport.data.preprocess\nassert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
