"""Install a test-only plugin package for real (pip, entry points) into a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def install_plugin(tmp: Path, dist: str, module_source: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """Write a one-module package named `dist`, pip-install it into tmp/site, return that folder.

    `entry_points` maps a group (e.g. "noharm.methods") to {name: "module"}.
    """
    return install_package(tmp, dist, {f"{dist}/__init__.py": textwrap.dedent(module_source)}, entry_points)


def install_package(tmp: Path, dist: str, files: dict[str, str], entry_points: dict[str, dict[str, str]]) -> Path:
    """Write package `dist` from {relative path: source} (an empty `dist/__init__.py` unless given),
    pip-install it with these entry points into tmp/site (no network, no build isolation), return that folder."""
    src = tmp / f"{dist}-src"
    (src / dist).mkdir(parents=True)
    for rel, text in {f"{dist}/__init__.py": "", **files}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    eps = "\n".join(
        f'[project.entry-points."{group}"]\n' + "\n".join(f'{k} = "{v}"' for k, v in items.items())
        for group, items in entry_points.items()
    )
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.0.1"

        [tool.setuptools]
        packages = ["{dist}"]
        """) + eps + "\n")
    site = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(src)],
        check=True, capture_output=True,
    )
    return site


def env_with(site: Path) -> dict[str, str]:
    """The current environment with `site` first on PYTHONPATH (so entry points are found)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env
