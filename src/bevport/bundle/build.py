"""`build_bundle`: check a run's export, quantize, validate and bench outputs against each other, then write the
release bundle, its deterministic archive and the run-dependent files beside it. See `bevport.bundle` for the layout.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Tuple

from bevport import __version__
from bevport.bundle.archive import BundleError, default_mtime, write_archive
from bevport.bundle.canonical import canonical_json, split_volatile
from bevport.contract import build_contract
from bevport.fsutil import sha256_file
from bevport.runtime.graphs import source_graph

FORMAT = "bevport-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REPORTS = "reports"
FLAGGED_VARIANT = "int8 (default)"      # the quantization report's variant that runs as deployed
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".mp4")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_LISTED = 5


def archive_path(bundle: os.PathLike) -> Path:
    """`dist/<name>.tar.gz` of the bundle folder `dist/<name>`."""
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + ".tar.gz")


def timings_path(bundle: os.PathLike) -> Path:
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + ".timings.json")


def extras_path(bundle: os.PathLike) -> Path:
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + ".extras")


def _fail(summary: str, problems: List[str], hint: Optional[str] = None) -> None:
    shown = "; ".join(problems[:_MAX_LISTED])
    more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
    raise BundleError(f"{summary}: {shown}{more}", hint, problems)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object at the top level")
    return data


def load_environment(path: os.PathLike) -> Dict[str, Any]:
    """The `--environment FILE.json` of `bevport bundle`: image IDs, base digests, package versions (any mapping)."""
    if not Path(path).is_file():
        raise BundleError(f"environment file not found: {path}")
    return _read_json(Path(path))


def _copy_hashed(src: Path, dst: Path) -> Tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        for block in iter(lambda: fi.read(1 << 20), b""):
            digest.update(block)
            fo.write(block)
            size += len(block)
    return digest.hexdigest(), size


class _Inputs:
    """Every input file of a bundle, checked for presence, parsed, and cross-checked before anything is written."""

    def __init__(self, recipe, onnx_dir: Path, ir_dir: Path, validate: Optional[Path], bench: Optional[Path],
                 ap: Optional[Path], vis_dir: Optional[Path], calib_dir: Optional[Path],
                 parity_reference: Optional[Path] = None):
        contract = build_contract(recipe)
        self.recipe = recipe
        self.onnx_dir, self.ir_dir, self.calib_dir = onnx_dir, ir_dir, calib_dir
        self.onnx_files = [spec.file for spec in contract]
        self.sources = {g: contract[source_graph(recipe, g)].file for g in recipe.quantize.graphs}
        self.int8 = {g: recipe.quantize.graphs[g].ir for g in recipe.quantize.graphs}
        self.ir_files = [f"{stem}{ext}" for stem in self.int8.values() for ext in (".xml", ".bin")]
        # (bundle-relative path, source) of every file the deploy tree receives
        model_dir = str(recipe.runtime.model_dir).strip("/")
        if not model_dir or PurePosixPath(model_dir).is_absolute() or ".." in PurePosixPath(model_dir).parts:
            raise BundleError(f"recipe runtime.model_dir `{model_dir}` must be a relative folder inside the bundle")
        self.model_dir = model_dir
        # the graphs, and the files export wrote beside them for the runtime (the camera-only frustum)
        self.artifacts = _export_artifacts(onnx_dir / "export.json")
        self.deploy = [(f"{model_dir}/{n}", onnx_dir / n) for n in self.onnx_files + self.artifacts] + \
                      [(f"{model_dir}/{n}", ir_dir / n) for n in self.ir_files]
        self.json_paths = {"export": onnx_dir / "export.json", "parity": onnx_dir / "parity.json",
                           "quantize": ir_dir / "quantize.json", "report": ir_dir / "report.json"}
        for key, path in (("validate", validate), ("bench", bench), ("ap", ap),
                          ("parity_reference", parity_reference)):
            if path is not None:
                self.json_paths[key] = Path(path)
        self.report_md, self.report_png = ir_dir / "report.md", ir_dir / "report.png"
        self.vis_dir = vis_dir
        self._check_present()
        self.json = {key: _read_json(path) for key, path in self.json_paths.items()}
        self.pictures = self._pictures()
        self.hashes: Dict[str, str] = {}
        self._cross_check()

    def _check_present(self) -> None:
        wanted = [src for _, src in self.deploy] + list(self.json_paths.values()) + [self.report_md, self.report_png]
        if self.calib_dir is not None:
            wanted.append(self.calib_dir / "manifest.json")
        missing = [str(p) for p in wanted if not p.is_file()]
        if self.vis_dir is not None and not self.vis_dir.is_dir():
            missing.append(f"{self.vis_dir}/ (picture folder)")
        if missing:
            _fail(f"cannot bundle, {len(missing)} input file(s) missing", missing,
                  "pass the folders of one `bevport export` and `bevport quantize` run (quantize with its report)")

    def _pictures(self) -> List[Path]:
        if self.vis_dir is None:
            return []
        pictures = sorted(p for p in self.vis_dir.iterdir() if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES)
        if not pictures:
            raise BundleError(f"{self.vis_dir}: no pictures ({', '.join(PICTURE_SUFFIXES)}) in the --vis folder",
                              "pass the --vis-dir of `bevport infer --no-timing`, or leave --vis out")
        return pictures

    def _cross_check(self) -> None:
        problems: List[str] = []
        name = self.recipe.name
        for key, data in self.json.items():
            if "recipe" in data and data["recipe"] != name:
                problems.append(f"{self.json_paths[key]} is for recipe `{data['recipe']}`, not `{name}`")
        export, quantize = self.json["export"], self.json["quantize"]
        self.checkpoint_sha = str((export.get("checkpoint") or {}).get("sha256", ""))
        if not _SHA256.match(self.checkpoint_sha):
            problems.append(f"{self.json_paths['export']}: no checkpoint sha256")
        self.calibration = quantize.get("calibration") or {}
        if not _SHA256.match(str(self.calibration.get("sha256", ""))):
            problems.append(f"{self.json_paths['quantize']}: no calibration-set sha256")

        recorded_onnx = dict(export.get("files") or {}, **(export.get("artifacts") or {}))
        for file in self.onnx_files + self.artifacts:
            path = self.onnx_dir / file
            self.hashes[str(path)] = actual = sha256_file(path)
            if file not in recorded_onnx:
                problems.append(f"{self.json_paths['export']} records no hash for {file}")
            elif recorded_onnx[file] != actual:
                problems.append(f"{path} changed after export (export.json records sha256 {recorded_onnx[file][:12]}, "
                                f"the file has {actual[:12]})")

        parity = self.json.get("parity_reference")
        if parity is not None:
            if not parity.get("passed"):
                problems.append(f"{self.json_paths['parity_reference']}: the graphs did not match the training tree "
                                f"({parity.get('first_failure')})")
            for file, sha in (parity.get("files") or {}).items():
                if sha != self.hashes.get(str(self.onnx_dir / file)):
                    problems.append(f"{self.json_paths['parity_reference']} compared another {file} than the one "
                                    "bundled")

        graphs = quantize.get("graphs") or {}
        recorded_ir: Dict[str, Dict] = {}
        for graph, int8 in self.int8.items():
            entry = graphs.get(graph)
            if not isinstance(entry, dict):
                problems.append(f"{self.json_paths['quantize']} has no entry for graph `{graph}`")
                continue
            recorded_ir.update(entry.get("files") or {})
            if entry.get("onnx") != self.sources[graph] or entry.get("int8_ir") != f"{int8}.xml":
                problems.append(f"{self.json_paths['quantize']}: graph `{graph}` was quantized as "
                                f"{entry.get('onnx')} -> {entry.get('int8_ir')}, the recipe says "
                                f"{self.sources[graph]} -> {int8}.xml")
        for file in self.ir_files:
            path = self.ir_dir / file
            self.hashes[str(path)] = actual = sha256_file(path)
            record = recorded_ir.get(file)
            if not isinstance(record, dict) or "sha256" not in record:
                problems.append(f"{self.json_paths['quantize']} records no hash for {file}")
            elif record["sha256"] != actual or record.get("bytes", path.stat().st_size) != path.stat().st_size:
                problems.append(f"{path} changed after quantize (quantize.json records sha256 "
                                f"{str(record['sha256'])[:12]}, the file has {actual[:12]})")
        self.onnx_link = self._onnx_link(problems)
        if problems:
            _fail("cannot bundle, the inputs do not belong to one run", problems,
                  "bundle the folders of one export -> calibrate -> quantize chain (rerun the later steps after "
                  "a new export)")

    def _onnx_link(self, problems: List[str]) -> str:
        """Check the bundled ONNX graphs are the ones the INT8 IRs were quantized from; returns what proved it."""
        quantize = self.json["quantize"]
        recorded = quantize["onnx"].get("files") if isinstance(quantize.get("onnx"), dict) else None
        source = "quantize.json"
        if recorded is None:
            folder = self.calib_dir or (Path(self.calibration["folder"]) if self.calibration.get("folder") else None)
            if folder is None or not (folder / "manifest.json").is_file():
                return "not recorded"
            manifest = _read_json(folder / "manifest.json")
            if manifest.get("sha256") != self.calibration.get("sha256"):
                if self.calib_dir is not None:
                    problems.append(f"{folder} is not the calibration set the IRs were quantized with "
                                    f"(sha256 {str(manifest.get('sha256'))[:12]}, quantize.json records "
                                    f"{str(self.calibration.get('sha256'))[:12]})")
                return "not recorded"
            recorded = (manifest.get("onnx") or {}).get("files")
            source = "calibration manifest"
        if not isinstance(recorded, dict):
            return "not recorded"
        for file, sha in sorted(recorded.items()):
            path = self.onnx_dir / file
            actual = self.hashes.get(str(path))
            if actual is None:
                problems.append(f"the INT8 IRs were quantized from {file}, which is not a graph of this bundle")
            elif actual != sha:
                problems.append(f"{path} is not the graph the INT8 IRs were quantized from ({source} records sha256 "
                                f"{str(sha)[:12]}, the file has {actual[:12]})")
        return source


def _export_artifacts(path: Path) -> List[str]:
    """The names of the artifacts an export recorded (export.json `artifacts`), [] when it records none or the file
    is missing (reported with the other missing inputs)."""
    if not path.is_file():
        return []
    artifacts = _read_json(path).get("artifacts") or {}
    names = sorted(artifacts) if isinstance(artifacts, dict) else []
    unsafe = [n for n in names if PurePosixPath(n).name != n]
    if unsafe:
        raise BundleError(f"{path}: artifact names must be plain file names, got {', '.join(unsafe)}")
    return names


def _pick(mapping: Any, keys) -> Dict[str, Any]:
    return {k: mapping[k] for k in keys if isinstance(mapping, dict) and k in mapping}


def _figures(stable: Dict[str, Dict], name: str) -> Dict[str, Any]:
    """The key figures of the run, from the reports' stable parts (wall-clock figures are in the timings file)."""
    parity = stable["parity"]
    figures: Dict[str, Any] = {"parity": {
        "gate": _pick(parity, ("reference", "factor", "floor")), "passed": parity.get("passed"),
        "graphs": {key: {"file": g.get("file"), "passed": g.get("passed"),
                         "worst_rel_error": max((o.get("max_rel_error", 0.0) for o in g.get("outputs", {}).values()),
                                                default=None),
                         "worst_abs_error": max((o.get("max_abs_error", 0.0) for o in g.get("outputs", {}).values()),
                                                default=None)}
                   for key, g in (parity.get("graphs") or {}).items()}}}
    report = stable["report"]
    figures["quantization"] = {
        "variant": FLAGGED_VARIANT, "reference": report.get("reference"), "min_snr_db": report.get("min_snr_db"),
        "flags": report.get("flags", []), "warning": report.get("warning"),
        "graphs": {g: {out: _pick(variants.get(FLAGGED_VARIANT, {}), ("snr_db", "cosine"))
                       for out, variants in (r.get("outputs") or {}).items()}
                   for g, r in (report.get("graphs") or {}).items()}}
    if "validate" in stable:
        v = stable["validate"]
        figures["validate"] = dict(
            _pick(v, ("passed", "failures", "device", "device_name")),
            frames=len(v.get("frames") or []), boxes=v.get("boxes"),
            drift={g: {out: _pick(m, ("snr_db", "cosine")) for out, m in outs.items()}
                   for g, outs in (v.get("drift") or {}).items()})
    if "bench" in stable:
        b = stable["bench"]
        figures["bench"] = dict(_pick(b, ("device", "device_name", "inference_precision_fp32")),
                                precisions=sorted(b.get("precisions") or {}),
                                figures=f"{name}.timings.json (frames per second and latency vary run to run)")
    if "ap" in stable:
        a = stable["ap"]
        figures["ap"] = dict(_pick(a, ("metric", "frames")), classes={
            cls: {d: _pick(m, ("AP_3D", "AP_BEV")) for d, m in diffs.items()}
            for cls, diffs in (a.get("classes") or {}).items()})
    return figures


def _timing_figures(raw: Dict[str, Dict]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if "bench" in raw:
        b = raw["bench"]
        out["bench"] = {"int8_speedup": b.get("int8_speedup"), "peak_rss_mib": b.get("peak_rss_mib"), "precisions": {
            p: {"fps": (e.get("latency") or {}).get("fps"),
                "frame_ms": ((e.get("latency") or {}).get("stages") or {}).get("frame"),
                "throughput_fps": (e.get("throughput") or {}).get("fps"),
                "stream_fps": (e.get("stream") or {}).get("fps")}
            for p, e in (b.get("precisions") or {}).items()}}
    out["quantize_latency_ms"] = {
        g: {label: m.get("median_ms") for label, m in (r.get("latency") or {}).items()}
        for g, r in (raw["report"].get("graphs") or {}).items()}
    return out


def _report_markdown(report: Dict[str, Any], name: str) -> str:
    """The quantization report without its latency table: drift, sizes, flags (all stable for given inputs)."""
    # Imported here: `bevport.bundle` (verify on a deployment host) should not pull in the quantize package.
    from bevport.quantize.report import report_markdown

    return report_markdown(report, latency=False, note=(
        f"Latency and speed-up of this run: `{name}.timings.json` beside the archive; the original report with its "
        f"latency table and chart: `{name}.extras/`."))


def _recipe_yaml(recipe) -> bytes:
    """The recipe as YAML that loads back to the same recipe: mapping order kept (export.graphs is in export order)."""
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(recipe.to_dict())), sort_keys=False, default_flow_style=False,
                          allow_unicode=False).encode("ascii")


def _commit(stage: Path, dist: Path, names: List[str]) -> None:
    """Move each staged item over its counterpart in `dist` (an old folder is moved aside first)."""
    for name in names:
        src, dst = stage / name, dist / name
        if src.is_dir() and (dst.exists() or dst.is_symlink()):
            os.replace(dst, stage / f".old-{name}")
        os.replace(src, dst)


def build_bundle(recipe, onnx_dir: os.PathLike, ir_dir: os.PathLike, dist: os.PathLike, *,
                 validate: Optional[os.PathLike] = None, bench: Optional[os.PathLike] = None,
                 vis_dir: Optional[os.PathLike] = None, environment: Optional[Dict[str, Any]] = None,
                 ap: Optional[os.PathLike] = None, calib_dir: Optional[os.PathLike] = None,
                 parity_reference: Optional[os.PathLike] = None, mtime: Optional[int] = None, progress: Callable[[str], None] = lambda msg: None,
                 warn: Callable[[str], None] = lambda msg: None) -> Path:
    """Write `dist/<recipe>-<checkpoint sha256[:12]>/`, its `.tar.gz`, `.tar.gz.sha256`, `.timings.json` and
    `.extras/`; returns the bundle folder. Every input is checked first: on any problem nothing is written."""
    onnx_dir, ir_dir, dist = Path(onnx_dir), Path(ir_dir), Path(dist)
    opt = lambda p: None if p is None else Path(p)  # noqa: E731
    if environment is not None and not isinstance(environment, dict):
        raise BundleError("environment must be a mapping (image IDs, base digests, package versions)")
    progress("checking the export and quantize outputs")
    inputs = _Inputs(recipe, onnx_dir, ir_dir, opt(validate), opt(bench), opt(ap), opt(vis_dir), opt(calib_dir),
                     opt(parity_reference))
    if inputs.onnx_link == "not recorded":
        warn("neither quantize.json nor its calibration set records the ONNX hashes the INT8 IRs were made from, "
             "so that link is unchecked (pass --calib with the calibration folder to check it)")
    name = f"{recipe.name}-{inputs.checkpoint_sha[:12]}"
    mtime = default_mtime() if mtime is None else int(mtime)

    stable, removed = {}, {}
    for key, data in inputs.json.items():
        stable[key], removed[key] = split_volatile(data)
    report_names = {"export": "export.json", "parity": "parity.json", "quantize": "quantize.json",
                    "report": "quantize_report.json", "validate": "validate.json", "bench": "bench.json",
                    "ap": "ap.json", "parity_reference": "parity-reference.json"}
    texts = {f"{REPORTS}/{report_names[k]}": canonical_json(v) for k, v in stable.items()}
    texts[f"{REPORTS}/quantize_report.md"] = _report_markdown(stable["report"], name).encode("utf-8")
    texts["recipe.yaml"] = _recipe_yaml(recipe)
    try:
        environment_bytes = canonical_json(environment or {})
    except (TypeError, ValueError) as exc:
        raise BundleError(f"environment is not JSON data ({exc})") from None

    dist.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=dist))
    try:
        bundle = stage / name
        files: Dict[str, Dict[str, Any]] = {}
        for rel, src in inputs.deploy:
            progress(f"copying {src.name}")
            target = bundle / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            sha, size = _copy_hashed(src, target)
            if sha != inputs.hashes[str(src)]:
                raise BundleError(f"{src} changed while it was being bundled", "run `bevport bundle` again")
            files[rel] = {"sha256": sha, "size": size}
        for picture in inputs.pictures:
            rel = f"{REPORTS}/pictures/{picture.name}"
            (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
            sha, size = _copy_hashed(picture, bundle / rel)
            files[rel] = {"sha256": sha, "size": size}
        for rel, data in texts.items():
            (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
            (bundle / rel).write_bytes(data)
            files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "bevport_version": __version__,
            "recipe": recipe.name, "model_dir": inputs.model_dir,
            "checkpoint_sha256": inputs.checkpoint_sha, "calibration_sha256": inputs.calibration.get("sha256"),
            "calibration_synthetic": bool(inputs.calibration.get("synthetic")),
            "provenance": {"onnx_to_int8": inputs.onnx_link},
            "environment": json.loads(environment_bytes.decode("ascii")),
            "figures": dict(_figures(stable, name), pictures=[p.name for p in inputs.pictures]),
            "files": files,
        }
        (bundle / MANIFEST).write_bytes(canonical_json(manifest))

        progress(f"writing {name}.tar.gz")
        archive = stage / f"{name}.tar.gz"
        write_archive(bundle, archive, mtime)
        archive_sha = sha256_file(archive)
        (stage / f"{name}.tar.gz.sha256").write_text(f"{archive_sha}  {name}.tar.gz\n")

        extras = stage / f"{name}.extras"
        extras.mkdir()
        extra_files: Dict[str, Dict[str, Any]] = {}
        copies = [("quantize_report.md", inputs.report_md), ("quantize_report.png", inputs.report_png)]
        for rel, src in copies:
            (extras / rel).parent.mkdir(parents=True, exist_ok=True)
            sha, size = _copy_hashed(src, extras / rel)
            extra_files[rel] = {"sha256": sha, "size": size}
        timings = {
            "bundle": name, "archive": f"{name}.tar.gz", "archive_sha256": archive_sha,
            "about": "run-dependent values kept out of the bundle: wall-clock figures and local paths, removed from "
                     "the bundled reports by the rule in bevport.bundle.canonical (`removed`: JSON pointers per "
                     f"report), and the files in {name}.extras/ (`extras`)",
            "figures": _timing_figures(inputs.json),
            "removed": {f"{REPORTS}/{report_names[k]}": v for k, v in removed.items() if v},
            "extras": extra_files,
        }
        (stage / f"{name}.timings.json").write_bytes(canonical_json(timings))
        _commit(stage, dist, [f"{name}.extras", f"{name}.timings.json", f"{name}.tar.gz.sha256", f"{name}.tar.gz",
                              name])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dist / name
