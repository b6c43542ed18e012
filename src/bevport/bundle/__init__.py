"""Release bundles: the deploy tree, the run's reports and a manifest, as a folder and a deterministic .tar.gz.

`build_bundle(recipe, onnx_dir, ir_dir, dist, ...)` writes, for `name = <recipe>-<checkpoint sha256[:12]>`:

    dist/<name>/                              the bundle (exactly what the archive holds)
        manifest.json                         format, versions, checkpoint and calibration-set sha256, environment,
                                              key figures, and sha256 + size of every other file (sorted by path)
        recipe.yaml                           the recipe the graphs were made with (for `--recipe`)
        <recipe.runtime.model_dir>/           what Intel's deploy binary reads: the FP32 ONNX graphs and the INT8
                                              IR pairs quantized_{camera,lidar_pfe,fuser,head}.{xml,bin}
        reports/                              export.json, parity.json, quantize.json, quantize_report.json,
                                              quantize_report.md, and validate.json, bench.json, ap.json when given
        reports/pictures/                     the --vis folder's png/jpg/mp4 files, as given
    dist/<name>.tar.gz                        deterministic archive of dist/<name>/
    dist/<name>.tar.gz.sha256                 `sha256sum -c` line for the archive
    dist/<name>.timings.json                  everything run-dependent that the bundle leaves out (below)
    dist/<name>.extras/                       quantize_report.md and .png as `bevport quantize` wrote them (with
                                              its latency table and chart)

Determinism: the same inputs give the same archive bytes. The archive holds only content that depends on the
inputs, never on the run: JSON reports are rewritten in canonical form (sorted keys, fixed separators, ASCII) with
their volatile fields removed by the rule in `bevport.bundle.canonical` (wall-clock keys such as `*_ms`, `*_s`,
`*seconds`, `*fps`, `*_mib`, `latency`/`throughput`/`stream` blocks, `*speedup*`, `non_model_share`; path keys such as
`folder`, `bundle`, `path`, `recipe_origin`; and any string value that is an absolute path). The removed values
are kept, by JSON pointer, in `<name>.timings.json`, with the bench frames-per-second and latency figures. The
quantization report's markdown is regenerated without its latency table; its PNG (half of it a latency chart)
goes to `<name>.extras/`. Pictures are bundled as given: make them with `bevport infer --no-timing`, since by
default their HUD prints the frame latency (the H.264 writer itself is reproducible). The tar has sorted
entries, PAX format, one fixed mtime (`mtime=`, else SOURCE_DATE_EPOCH, else 0), uid/gid 0 without owner names,
modes 0755/0644, and a gzip header with mtime 0 and no file name. The manifest's `environment` is stored as
given by the caller.

Before writing, every input must exist and the hashes recorded by export (export.json) and quantize
(quantize.json) must match the files; the ONNX-to-INT8 link is checked against the ONNX hashes in quantize.json
(`onnx.files`) or, failing that, in its calibration set's manifest. On any problem nothing is written to `dist`;
an existing bundle of the same name is replaced only once the new one is complete.

`verify_bundle(path)` takes the folder or the .tar.gz (extracted safely: no absolute paths, `..` or links),
re-hashes every listed file and raises BundleError for missing, changed or unlisted files.
"""
from __future__ import annotations

from bevport.bundle.archive import BundleError, safe_extract, write_archive
from bevport.bundle.build import (FORMAT, FORMAT_VERSION, archive_path, build_bundle, extras_path, load_environment,
                                  timings_path)
from bevport.bundle.canonical import canonical_json, is_volatile_key, split_volatile
from bevport.bundle.verify import verify_bundle

__all__ = ["BundleError", "FORMAT", "FORMAT_VERSION", "archive_path", "build_bundle", "canonical_json",
           "extras_path", "is_volatile_key", "load_environment", "safe_extract", "split_volatile", "timings_path",
           "verify_bundle", "write_archive"]
