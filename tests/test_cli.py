import json

import pytest
from typer.testing import CliRunner

from agentic_mlops.cli import app
from agentic_mlops.tasks.batches import read_table

runner = CliRunner()


def test_generate_one_file_and_a_folder_of_batches(tmp_path):
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "d.csv"), "--rows", "50"])
    assert result.exit_code == 0, result.output
    assert len(read_table(tmp_path / "d.csv")) == 50
    result = runner.invoke(
        app,
        [
            "generate",
            "--out",
            str(tmp_path / "b"),
            "--rows",
            "20",
            "--batches",
            "3",
            "--scenario",
            "gradual",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "b").glob("batch-*.parquet"))) == 3


def test_generate_rejects_an_unknown_scenario(tmp_path):
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "d.csv"), "--scenario", "x"])
    assert result.exit_code == 2 and "unknown scenario" in result.output


def test_train_prints_json_and_registers(home, tmp_path):
    data = tmp_path / "train.parquet"
    runner.invoke(app, ["generate", "--out", str(data), "--rows", "400"])
    result = runner.invoke(app, ["train", "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{") :])
    assert payload["version"] == 1 and "champion" in payload["aliases"]


def test_train_on_a_missing_file_exits_2_with_one_line(home, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "absent.csv")])
    assert result.exit_code == 2
    assert "error:" in result.output and "no such file" in result.output
    assert "Traceback" not in result.output


def test_train_rejects_invalid_parameters(home):
    result = runner.invoke(app, ["train", "--rows", "5"])
    assert result.exit_code == 2 and "rows" in result.output


@pytest.mark.slow
def test_retrain_prints_the_search_and_the_challenger(home):
    result = runner.invoke(
        app,
        ["retrain", "--rows", "800", "--max-trials", "2", "--hand-over", "none", "--json"],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{") :])
    assert payload["training"]["version"] == 1 and payload["trials"] == 2
    assert payload["advisor"]["agent_model"] == "policy"


def test_retrain_refuses_bad_input_with_one_line(home, tmp_path):
    result = runner.invoke(app, ["retrain", "--hand-over", "sideways"])
    assert result.exit_code == 2 and "hand_over" in result.output
    result = runner.invoke(app, ["retrain", "--data", str(tmp_path / "absent.csv")])
    assert result.exit_code == 2 and "no such file" in result.output
    assert "Traceback" not in result.output


def test_serve_without_a_champion_says_what_to_do(home):
    result = runner.invoke(app, ["serve", "--port", "0"])
    assert result.exit_code == 2 and "agentic-mlops train" in result.output


def test_canary_without_a_challenger_or_with_bad_steps_exits_2(home):
    result = runner.invoke(app, ["canary"])
    assert result.exit_code == 2 and "no challenger" in result.output
    result = runner.invoke(app, ["canary", "--version", "1", "--steps", "50,20"])
    assert result.exit_code == 2 and "steps must rise and end at 100" in result.output
    result = runner.invoke(app, ["canary", "--version", "1", "--steps", "ten"])
    assert result.exit_code == 2 and "invalid parameters" in result.output


def test_k8s_render_writes_validated_manifests_and_refuses_bad_input(home, tmp_path):
    import yaml

    result = runner.invoke(
        app,
        [
            "k8s",
            "render",
            "--version",
            "3",
            "--canary",
            "4",
            "--weight",
            "0.25",
            "--out",
            str(tmp_path / "k8s"),
        ],
    )
    assert result.exit_code == 0, result.output
    kinds = sorted(yaml.safe_load(p.read_text())["kind"] for p in (tmp_path / "k8s").iterdir())
    assert kinds == ["Deployment", "Deployment", "Service"]
    result = runner.invoke(
        app, ["k8s", "render", "--version", "3", "--weight", "2", "--out", str(tmp_path / "bad")]
    )
    assert result.exit_code == 2 and "between 0 and 1" in result.output
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_k8s_render_with_a_gateway_writes_the_route_that_names_it(home, tmp_path):
    import yaml

    out = tmp_path / "k8s"
    arguments = ["k8s", "render", "--version", "3", "--canary", "4", "--weight", "0.25"]
    result = runner.invoke(app, [*arguments, "--gateway", "public", "--out", str(out)])
    assert result.exit_code == 0, result.output
    objects = {p.name: yaml.safe_load(p.read_text()) for p in out.iterdir()}
    kinds = sorted(o["kind"] for o in objects.values())
    assert kinds == ["Deployment", "Deployment", "HTTPRoute", "Service", "Service"]
    route = next(o for o in objects.values() if o["kind"] == "HTTPRoute")
    assert [ref["name"] for ref in route["spec"]["parentRefs"]] == ["public"]
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [
        ("churn-stable", 750),
        ("churn-canary", 250),
    ]
    bad = tmp_path / "bad"
    result = runner.invoke(app, [*arguments, "--gateway", "Not A Name", "--out", str(bad)])
    assert result.exit_code == 2 and "Not A Name" in result.output
    assert not bad.exists() or not any(bad.iterdir())


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"AGENTIC_MLOPS_AGENT_MODEL": "gpt-4o"}, "Unknown model: gpt-4o"),
        ({"AGENTIC_MLOPS_AGENT_MODEL": "google:gemini-2.0-flash"}, "pydantic-ai-slim[google]"),
        ({"AGENTIC_MLOPS_AGENT_MODEL": "nonsense:x"}, "Unknown provider: nonsense"),
        ({"AGENTIC_MLOPS_AGENT_TEMPERATURE": "9"}, "AGENTIC_MLOPS_AGENT_TEMPERATURE"),
    ],
    ids=["no-provider", "missing-extra", "unknown-provider", "bad-value"],
)
@pytest.mark.parametrize("command", [["settings", "--check"], ["where"]])
def test_a_model_or_setting_that_cannot_work_stops_every_command_with_one_line(
    monkeypatch, variables, message, command
):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_an_openai_compatible_endpoint_passes_the_check_and_its_key_is_never_shown(monkeypatch):
    monkeypatch.setenv("AGENTIC_MLOPS_AGENT_MODEL", "llama3.1")
    monkeypatch.setenv("AGENTIC_MLOPS_AGENT_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("AGENTIC_MLOPS_AGENT_API_KEY", "sk-very-secret-key")
    checked = runner.invoke(app, ["settings", "--check"])
    assert checked.exit_code == 0, checked.output
    assert "openai-chat:llama3.1" in checked.output
    shown = runner.invoke(app, ["settings"])
    assert shown.exit_code == 0 and "sk-very-secret-key" not in shown.output
    assert json.loads(shown.output)["agents"]["base_url"] == "http://127.0.0.1:11434/v1"
