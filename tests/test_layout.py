"""The house's rules: one installed namespace (`noharm.*`) and imports that point one way.

datasets <- methods <- bench, bench may use analysis; analysis imports neither bench nor methods nor
datasets; inside bench, sweep/ and stress/ never import each other and the shared core imports neither.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"datasets": "noharm.datasets", "methods": "noharm.methods", "bench": "noharm.bench",
           "analysis": "noharm.analysis", "noharm": "noharm"}

# (importer package prefix, forbidden imported prefixes)
FORBIDDEN = [
    ("noharm.registry", ["noharm.datasets", "noharm.methods", "noharm.bench", "noharm.analysis"]),
    ("noharm.datasets", ["noharm.methods", "noharm.bench", "noharm.analysis"]),
    ("noharm.methods", ["noharm.bench", "noharm.analysis"]),
    ("noharm.analysis", ["noharm.bench", "noharm.methods", "noharm.datasets"]),
    ("noharm.bench.sweep", ["noharm.bench.stress", "noharm.bench.commands", "noharm.bench.cli"]),
    ("noharm.bench.stress", ["noharm.bench.sweep", "noharm.bench.commands", "noharm.bench.cli"]),
]
CORE = ["noharm.bench.trial", "noharm.bench.task", "noharm.bench.compose", "noharm.bench.tracking", "noharm.bench.objectives",
        "noharm.bench.errors", "noharm.bench.console"]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (absolute names; function-local imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_files() -> list[Path]:
    files = [p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")]
    return [p for p in files if "perf" not in p.relative_to(ROOT).parts]


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(edges.items()):
        rules = [(imp, forb) for imp, forb in FORBIDDEN if module == imp or module.startswith(imp + ".")]
        if module in CORE:
            rules.append((module, ["noharm.bench.sweep", "noharm.bench.stress", "noharm.bench.commands"]))
        for _, forbidden in rules:
            for target in sorted(targets):
                if any(target == f or target.startswith(f + ".") for f in forbidden):
                    bad.append(f"{module} imports {target}")
    return bad


def test_imports_point_one_way():
    edges = {module_name(p): imports_of(p) for p in project_files()}
    assert len(edges) > 80  # every package was read
    assert violations(edges) == []


def test_the_rule_catches_an_upward_import():
    """The checker itself can fail: analysis importing bench, datasets importing methods."""
    edges = {"noharm.analysis.tables": {"noharm.bench.tracking"}, "noharm.datasets.adult": {"noharm.methods"},
             "noharm.bench.sweep.run": {"noharm.bench.stress.run"}, "noharm.bench.trial": {"noharm.bench.sweep"},
             "noharm.methods.erm": {"noharm.datasets"}}
    assert violations(edges) == ["noharm.analysis.tables imports noharm.bench.tracking",
                                 "noharm.bench.sweep.run imports noharm.bench.stress.run",
                                 "noharm.bench.trial imports noharm.bench.sweep",
                                 "noharm.datasets.adult imports noharm.methods"]


def test_no_bare_top_level_imports():
    """Nothing imports the folders by their bare names (they are not installed under them)."""
    bare = {"datasets", "methods", "bench", "analysis", "registry"}
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in project_files() + list((ROOT / "tests").rglob("*.py"))
           for m in imports_of(p) if m.split(".")[0] in bare]
    assert bad == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src")
    # Build from a copy: setuptools writes build/ and *.egg-info beside the sources.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(src)], check=True, capture_output=True, cwd=out)
    (path,) = out.glob("noharm-*.whl")
    return path


def test_wheel_installs_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"noharm"}
    for expected in ("noharm/registry.py", "noharm/datasets/adult.py", "noharm/methods/fairsde/method.py",
                     "noharm/bench/sweep/run.py", "noharm/bench/stress/run.py", "noharm/analysis/report.py",
                     "noharm/bench/suites/default.yaml", "noharm/datasets/data/README.md"):
        assert expected in names
    assert not any("/perf/" in n for n in names)  # benchmarks are run from a checkout, not installed
    assert any(n.startswith("noharm/datasets/data/") and n.endswith(".gz") for n in names)


def test_installed_wheel_works_beside_a_foreign_datasets_package(wheel, tmp_path):
    """A top-level `datasets` (HuggingFace's name) earlier on the path neither shadows nor breaks noharm."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    foreign = tmp_path / "foreign"
    (foreign / "datasets").mkdir(parents=True)
    (foreign / "datasets" / "__init__.py").write_text("FOREIGN = True\ndef load_dataset(*a, **k):\n    return 'hf'\n")
    code = ("import datasets, noharm.datasets as nd, noharm.methods as nm, noharm.bench.cli\n"
            "assert datasets.FOREIGN and datasets.load_dataset() == 'hf'\n"
            "assert 'german' in nd.DATASETS.names() and 'fairsde' in nm.METHODS.names()\n"
            "bundle = nd.get_dataset('german').load(0)\n"
            "print(noharm.datasets.__file__, len(bundle.table))\n")
    env = {"PYTHONPATH": f"{foreign}:{site}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    run = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path[:0] = "
                          f"{[str(foreign), str(site)]!r}; exec({code!r})"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    path, rows = run.stdout.split()
    assert path.startswith(str(site)) and int(rows) == 1000


def local_imports(path: Path) -> list[tuple[int, str]]:
    """Function-local imports of a file that are neither marked `# lazy: why` nor a probe inside `try`."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        chain, up = [], parent.get(node)
        while up is not None:
            chain.append(up)
            up = parent.get(up)
        in_function = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in chain)
        probe = any(isinstance(n, ast.Try) for n in chain)
        if in_function and not probe and "# lazy" not in lines[node.lineno - 1]:
            found.append((node.lineno, lines[node.lineno - 1].strip()))
    return found


def test_bench_library_imports_at_module_level():
    """bench's library modules import at the top; a function-local import says why (`# lazy: ...`).
    The CLI's command modules are exempt: they defer heavy imports to `run` on purpose (commands/__init__)."""
    offenders = [f"{p.relative_to(ROOT)}:{n}: {line}" for p in (ROOT / "bench").rglob("*.py")
                 if not {"perf", "commands"} & set(p.relative_to(ROOT).parts) and p.name != "cli.py"
                 for n, line in local_imports(p)]
    assert offenders == []


def test_local_import_rule_flags_unmarked_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    import json\n    import ray  # lazy: env first\n"
                    "    try:\n        import grpc\n    except ImportError:\n        pass\n")
    assert local_imports(path) == [(4, "import json")]
