"""A command pays only for what it uses: the heavy libraries are imported where they are
needed, not when the command line or the drift check's modules load. Checked in a new
interpreter each time, since this test process has imported everything already."""

import json
import subprocess
import sys

HEAVY = (
    "mlflow.pyfunc",
    "mlflow.sklearn",
    "sklearn",
    "great_expectations",
    "evidently",
    "ray",
    "optuna",
    "imblearn",
    "kubernetes",
    "pydantic_ai.models.openai",
    "pydantic_ai.models.anthropic",
)
NEEDED_BY_FLOWS = ("prefect", "mlflow", "pydantic_ai")
"""Not needed to parse a command line or print its help, only to run a flow."""


def loaded_after(code: str) -> list[str]:
    """Which of the heavy modules a new interpreter holds after running `code`."""
    probe = (
        "import json, sys\n"
        f"{code}\n"
        f"print(json.dumps([m for m in {HEAVY + NEEDED_BY_FLOWS!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_command_line_module_imports_no_heavy_library():
    assert loaded_after("import agentic_mlops.cli") == []


def test_help_and_settings_import_no_heavy_library():
    for argv in (["drift-check", "--help"], ["settings"]):
        code = (
            "from agentic_mlops.cli import app\n"
            f"try:\n    app({argv!r})\nexcept SystemExit:\n    pass"
        )
        assert loaded_after(code) == [], argv


def test_the_drift_check_loads_only_what_checking_a_batch_needs():
    loaded = loaded_after("import agentic_mlops.flows.drift")
    assert set(NEEDED_BY_FLOWS) <= set(loaded)
    assert set(loaded) & set(HEAVY) == set()


def test_the_probe_sees_a_heavy_import_where_one_is_made():
    loaded = loaded_after("import agentic_mlops.tasks.models")
    assert "sklearn" in loaded
