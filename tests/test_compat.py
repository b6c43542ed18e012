"""src/ must run on Python 3.8 (the export image) and the runtime path must not need torch."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bevport"
TORCH_FREE = ["data", "geometry", "runtime", "quantize", "bundle", "pipelines", "formats", "recipe.py", "configchain.py",
              "contract.py", "errors.py", "fsutil.py"]


def test_sources_parse_as_python38():
    for path in SRC.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


@pytest.mark.skipif(shutil.which("vermin") is None, reason="vermin not installed (pip install -e .[dev])")
def test_no_api_newer_than_python38():
    result = subprocess.run(["vermin", "-q", "--no-tips", "-t=3.8-", "--violations", "--eval-annotations", str(SRC)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_torch_free_modules_do_not_import_torch():
    code = ("import sys, importlib, pkgutil\n"
            "import bevport.recipe, bevport.contract, bevport.configchain, bevport.fsutil, bevport.geometry.lss\n"
            "import bevport.pipelines.v2xfusion, bevport.formats.kitti, bevport.runtime.infer, bevport.runtime.bench\n"
            "bevport.recipe.load_recipe(bevport.recipe.DEFAULT_RECIPE)\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    for name in TORCH_FREE:
        if not (SRC / name).exists():  # runtime/ and bundle/ arrive with their issues
            continue
        for path in (SRC / name).rglob("*.py") if (SRC / name).is_dir() else [SRC / name]:
            tree = ast.parse(path.read_text())
            imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert "torch" not in imported, path
