"""Check the import-linter contracts in pyproject.toml against the installed layout.

The package `agentic_mlops` maps `flows/`, `tasks/`, `agents/`, `serving/` and `deployments/`
in from the repository root (pyproject's `package-dir`), which import-linter cannot follow: it
reads one directory per package. So the check links the sources into one tree under a
temporary directory and runs `lint-imports` on it. `make lint` and tests/test_project.py run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("flows", "tasks", "agents", "serving", "deployments")


def link_tree(into: Path) -> Path:
    """Link the package's sources into `into/agentic_mlops`, as the installed package sees them."""
    package = into / "agentic_mlops"
    package.mkdir(parents=True)
    for source in (ROOT / "agentic_mlops").glob("*.py"):
        (package / source.name).symlink_to(source)
    for name in MAPPED:
        (package / name).symlink_to(ROOT / name, target_is_directory=True)
    return into


def lint_imports() -> subprocess.CompletedProcess[str]:
    """Run `lint-imports` with the contracts in pyproject.toml; the output says what broke."""
    with tempfile.TemporaryDirectory() as folder:
        tree = link_tree(Path(folder))
        env = {**os.environ, "PYTHONPATH": str(tree)}
        return subprocess.run(
            [
                str(Path(sys.executable).with_name("lint-imports")),
                "--config",
                str(ROOT / "pyproject.toml"),
                "--no-cache",
            ],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )


if __name__ == "__main__":
    done = lint_imports()
    print(done.stdout + done.stderr, end="")
    sys.exit(done.returncode)
