"""The installed package, its settings and its Prefect entrypoints."""

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.flows import load_flow_from_entrypoint

from agentic_mlops.settings import Settings
from tests.layers import link_tree, lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_namespace_maps_the_root_folders():
    import agentic_mlops.agents
    import agentic_mlops.flows
    import agentic_mlops.serving
    import agentic_mlops.tasks

    assert Path(agentic_mlops.flows.__file__).parent == ROOT / "flows"
    assert Path(agentic_mlops.tasks.__file__).parent == ROOT / "tasks"
    assert Path(agentic_mlops.agents.__file__).parent == ROOT / "agents"
    assert Path(agentic_mlops.serving.__file__).parent == ROOT / "serving"


def test_nothing_generic_is_installed_at_the_top_level(tmp_path):
    probe = (
        "import importlib.util, json; "
        "print(json.dumps({n: getattr(importlib.util.find_spec(n), 'origin', None) "
        "for n in ['flows', 'tasks', 'agents', 'deployments', 'serving', 'agentic_mlops.flows']}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    found = json.loads(out.stdout)
    assert found["agentic_mlops.flows"] == str(ROOT / "flows" / "__init__.py")
    for generic in ("flows", "tasks", "agents", "deployments", "serving"):
        assert found[generic] is None or str(ROOT) not in found[generic]


def test_console_script_is_declared():
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert any(e.name == "agentic-mlops" and e.value == "agentic_mlops.cli:main" for e in scripts)


def test_prefect_yaml_entrypoints_load():
    import yaml

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    entrypoints = [d["entrypoint"] for d in config["deployments"]]
    assert entrypoints
    for entrypoint in entrypoints:
        flow = load_flow_from_entrypoint(str(ROOT / entrypoint))
        assert flow.name


def test_home_holds_every_local_path(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTIC_MLOPS_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings()
    for path in (
        settings.mlflow_db,
        settings.artifacts_dir,
        settings.prefect_home,
        settings.data_dir,
        settings.reports_dir,
        settings.quarantine_dir,
    ):
        assert (tmp_path / "h") in path.parents
    assert settings.tracking_uri() == f"sqlite:///{tmp_path / 'h' / 'mlflow.db'}"


def test_mlflow_tracking_uri_variable_wins_over_the_embedded_default(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u@127.0.0.1:5432/db")
    assert Settings().tracking_uri() == "postgresql://u@127.0.0.1:5432/db"
    assert not Settings().uses_embedded_mlflow()
    monkeypatch.setenv("AGENTIC_MLOPS_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert Settings().tracking_uri() == "http://127.0.0.1:5000"


def test_agent_model_defaults_to_the_policy_and_secrets_stay_masked(monkeypatch):
    assert Settings().agents.model == "policy"
    monkeypatch.setenv("AGENTIC_MLOPS_AGENT_API_KEY", "sk-very-secret")
    settings = Settings()
    assert "sk-very-secret" not in settings.model_dump_json()
    assert "sk-very-secret" not in repr(settings)


def test_invalid_setting_is_a_clear_error(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.setenv("AGENTIC_MLOPS_MLFLOW_RETRIES", "many")
    with pytest.raises(ValidationError, match=r"mlflow\.retries"):
        Settings()


@pytest.mark.parametrize(
    ("variable", "actions", "missing"),
    [
        ("TRIAGE_ALLOWED_ACTIONS", '["none", "retrain"]', "escalate"),
        ("CANARY_ALLOWED_ACTIONS", '["promote", "hold"]', "rollback, ask_human"),
    ],
)
def test_allowed_actions_without_the_guardrails_fallbacks_are_refused(
    monkeypatch, variable, actions, missing
):
    from pydantic import ValidationError

    monkeypatch.setenv(f"AGENTIC_MLOPS_{variable}", actions)
    with pytest.raises(ValidationError, match=f"must include {missing}"):
        Settings()


def test_the_fewest_allowed_actions_are_the_fallbacks(monkeypatch):
    monkeypatch.setenv("AGENTIC_MLOPS_TRIAGE_ALLOWED_ACTIONS", '["escalate"]')
    monkeypatch.setenv("AGENTIC_MLOPS_CANARY_ALLOWED_ACTIONS", '["hold", "rollback", "ask_human"]')
    settings = Settings()
    assert settings.triage.allowed_actions == ("escalate",)
    assert settings.canary.allowed_actions == ("hold", "rollback", "ask_human")


def test_prefect_home_and_telemetry_defaults_are_applied():
    import os

    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["PREFECT_HOME"].endswith("prefect")


def constructions(folder: Path) -> list[str]:
    """Where a rollout backend is built by hand below `folder`, as `path:line`."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "LocalRollout(" in line or "KubernetesRollout(" in line:
                found.append(f"{path}:{number}")
    return found


def test_every_backend_comes_from_the_one_factory(tmp_path):
    """Flows, the CLI, the MCP tools and the demo take their backend from `rollout_backend`."""
    for folder in ("agentic_mlops", "flows", "agents", "tasks"):
        built = [
            place for place in constructions(ROOT / folder) if "tasks/rollout.py:" not in place
        ]
        assert built == [], f"build it with rollout_backend(settings): {built}"
    (tmp_path / "flow.py").write_text("backend = LocalRollout(settings)\n")
    assert constructions(tmp_path) != [], "the check sees a construction"


def test_the_layers_contract_holds():
    """cli/mcp → flows → agents → tasks → runtimes and settings: no import goes upward."""
    done = lint_imports()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_the_layers_contract_sees_an_upward_import(tmp_path):
    """The check is live: a task that imports a flow breaks the contract."""
    tree = link_tree(tmp_path)
    upward = tree / "agentic_mlops" / "tasks_upward.py"
    upward.write_text("from agentic_mlops.flows import drift\n")
    config = tmp_path / "layers.toml"
    config.write_text(
        (ROOT / "pyproject.toml")
        .read_text()
        .replace(
            '"agentic_mlops.tasks",\n', '"agentic_mlops.tasks : agentic_mlops.tasks_upward",\n'
        )
    )
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("lint-imports")),
            "--config",
            str(config),
            "--no-cache",
        ],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "agentic_mlops.tasks_upward is not allowed to import agentic_mlops.flows" in done.stdout


RUNBOOK_FLOWS = ("data_quality.py", "drift.py", "monitor.py")
"""Flow modules already holding nothing but their flow; the others follow as they are thinned."""


def definitions_besides_flows(source: str) -> list[str]:
    """The functions and classes a module defines at its top level that are not flows."""
    return [
        node.name
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
        and not any(
            isinstance(d, ast.Call) and getattr(d.func, "id", None) == "flow"
            for d in getattr(node, "decorator_list", [])
        )
    ]


def test_a_runbook_flow_module_defines_its_flow_and_nothing_else():
    """The work lives in `tasks/`: no task, helper or model defined in these flow modules."""
    for name in RUNBOOK_FLOWS:
        found = definitions_besides_flows((ROOT / "flows" / name).read_text())
        assert found == [], f"flows/{name} defines {found}: move them to tasks/"
    helper = '@flow(name="x")\ndef x():\n    pass\n\n\n@task\ndef step():\n    pass\n'
    assert definitions_besides_flows(helper) == ["step"], "the check sees a task"
