"""The package imports without torch, lists its commands, and builds a wheel holding every subpackage."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Root folders that pyproject maps to apclip.<name>.
SUBPACKAGES = ("engine", "export", "kernels", "train", "benchmarks", "scale")

# A meta-path finder that makes torch (and everything under it) unimportable, as on a runtime-only install.
BLOCK_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test ({name})")
        return None
sys.meta_path.insert(0, BlockTorch())
"""


def run_python(code: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_import_without_torch():
    code = BLOCK_TORCH + """
import apclip, apclip.engine, apclip.config, apclip.tokenizer, apclip.scoring, apclip.errors
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
try:
    apclip.load_model
except apclip.MissingExtraError as exc:
    print(exc)
else:
    raise SystemExit("apclip.load_model resolved without torch")
"""
    message = run_python(code).stdout
    assert 'pip install -c constraints.txt -e ".[torch]"' in message


def test_python_m_apclip_lists_console_scripts():
    declared = {ep.name for ep in metadata.distribution("apclip").entry_points if ep.group == "console_scripts"}
    assert {"apclip-export", "apclip-infer"} <= declared
    result = subprocess.run([sys.executable, "-m", "apclip"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert listed == declared


def copy_source_tree(target: Path) -> Path:
    """The repository without build outputs, so the build neither sees nor leaves stale files here."""
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    "out", "demo", "*.onnx", "*.pt")
    return Path(shutil.copytree(ROOT, target, ignore=ignore))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = copy_source_tree(work / "src")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (work / "dist").glob("apclip-*.whl")
    return built


def test_wheel_holds_every_module_of_every_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    required = {"apclip/__init__.py", "apclip/engine/__init__.py", "apclip/export/__init__.py",
                "apclip/kernels/__init__.py"}
    assert required <= names, sorted(required - names)
    expected = {f"apclip/{p.relative_to(ROOT / 'apclip').as_posix()}" for p in (ROOT / "apclip").rglob("*.py")}
    for sub in SUBPACKAGES:
        expected |= {f"apclip/{sub}/{p.relative_to(ROOT / sub).as_posix()}" for p in (ROOT / sub).rglob("*.py")}
    expected |= {f"apclip/data/{p.name}" for p in (ROOT / "apclip" / "data").glob("*.json")}
    expected = {name for name in expected if "__pycache__" not in name}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    stray = sorted(n for n in names if n.split("/")[0] in (*SUBPACKAGES, "tests"))
    assert not stray, f"top-level folders leaked into the wheel: {stray}"


def test_wheel_declares_the_console_scripts(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (entry_points,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = zf.read(entry_points).decode()
    declared = {ep.name for ep in metadata.distribution("apclip").entry_points if ep.group == "console_scripts"}
    for name in declared:
        assert f"{name} = " in text


def test_installed_wheel_imports_without_torch(wheel, tmp_path):
    """A non-editable install of the wheel (pip install . without extras) imports with torch absent."""
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                             "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    code = BLOCK_TORCH + """
import json, apclip, apclip.engine, apclip.tokenizer, apclip.scoring
assert "torch" not in sys.modules
print(json.dumps({"apclip": apclip.__file__, "engine": apclip.engine.__file__}))
"""
    env = dict(os.environ, PYTHONPATH=str(site))
    where = json.loads(run_python(code, cwd=tmp_path, env=env).stdout.strip().splitlines()[-1])
    for module, path in where.items():
        assert Path(path).is_relative_to(site), f"{module} imported from {path}, not the installed wheel"


# The torch side of the runtime packages: the reference model, checkpoint reading, the Triton kernel
# itself and the torch-made kernel cases. Everything else in apclip, apclip.engine and apclip.kernels
# must import without torch.
# The torch side of the core: the reference model and what loads or patches checkpoints for it.
TORCH_MODULES = {"apclip.model", "apclip.checkpoint", "apclip.safe_pickle", "apclip.kernels.maka",
                 "apclip.kernels.maka_trt_plugin", "apclip.testing.kernel_cases",
                 "apclip.patching", "apclip.pyslowfast", "apclip.temporal_vit"}
HEAVY = ("torch", "triton", "onnx", "onnxruntime")

WALK_MODULES = BLOCK_TORCH + """
import importlib, json, pkgutil
import apclip, apclip.engine, apclip.kernels
names = set()
for package in (apclip, apclip.engine, apclip.kernels):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        names.add(info.name)
needs_torch, imported = [], []
for name in sorted(names):
    try:
        importlib.import_module(name)
        imported.append(name)
    except ImportError as exc:
        if "torch is blocked" not in str(exc) and "torch" not in str(exc):
            raise
        needs_torch.append(name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(json.dumps({{"imported": imported, "needs_torch": needs_torch, "heavy": heavy}}))
"""


def test_every_runtime_module_imports_without_torch():
    """Walks apclip, apclip.engine and apclip.kernels with pkgutil (a lazy __init__ hides nothing): each
    module imports with torch blocked, except the torch side listed above, and none pulls in torch,
    triton, onnx or onnxruntime."""
    code = WALK_MODULES.replace("{heavy!r}", repr(set(HEAVY))).replace("{{", "{").replace("}}", "}")
    report = json.loads(run_python(code).stdout.strip().splitlines()[-1])
    assert set(report["needs_torch"]) == TORCH_MODULES, report["needs_torch"]
    assert {"apclip.engine.recognizer", "apclip.engine.cli.infer", "apclip.engine.runners.encoders", "apclip.engine.video.windows",
            "apclip.scoring", "apclip.testing.videos", "apclip.testing.assets"} <= set(report["imported"])
    assert len(report["imported"]) >= 20, report["imported"]
    assert report["heavy"] == [], f"importing the runtime pulled in {report['heavy']}"


def test_onnxruntime_loads_only_when_a_runner_is_built(tiny_bundle):
    code = BLOCK_TORCH + f"""
from apclip.engine.recognizer import Recognizer
import apclip.engine.runners.encoders, apclip.engine.scoring.scorers, apclip.engine.scoring.vocabulary
assert "onnxruntime" not in sys.modules, "onnxruntime imported before any runner was built"
rec = Recognizer.from_bundle({str(tiny_bundle)!r}, backend="ort", scorer="numpy")
assert "onnxruntime" in sys.modules
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "triton", "onnx"))
assert not heavy, heavy
print(rec.backend)
"""
    assert run_python(code).stdout.strip().splitlines()[-1] == "ort-cpu"


def test_python_m_apclip_runs_a_command():
    result = subprocess.run([sys.executable, "-m", "apclip", "infer", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: apclip-infer")
    unknown = subprocess.run([sys.executable, "-m", "apclip", "frobnicate"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown command 'frobnicate'" in unknown.stderr
