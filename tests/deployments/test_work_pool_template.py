"""The kubernetes work pool's base job template: well formed, and a valid Job when filled."""

import json
import re
from pathlib import Path

import pytest

from agentic_mlops.deployments.kubernetes.manifests import ManifestError, validate_manifest

TEMPLATE = (
    Path(__file__).resolve().parents[2] / "deployments" / "kubernetes" / ("base-job-template.json")
)
PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")


def filled(value, variables):
    """The template with every placeholder replaced by its variable's default."""
    if isinstance(value, dict):
        return {k: filled(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [filled(v, variables) for v in value]
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return variables[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), value)
    return value


def defaults():
    template = json.loads(TEMPLATE.read_text())
    return template, {k: v.get("default") for k, v in template["variables"]["properties"].items()}


def test_every_placeholder_has_a_variable_and_the_job_is_valid():
    template, variables = defaults()
    used = set(PLACEHOLDER.findall(json.dumps(template["job_configuration"])))
    assert used <= set(variables), used - set(variables)
    job = filled(template["job_configuration"]["job_manifest"], variables)
    job["metadata"]["name"] = "agentic-mlops-flow-x"
    validate_manifest(job, "1.37")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert {"name": "AGENTIC_MLOPS_HOME", "value": "/var/lib/agentic-mlops"} in container["env"]


def test_a_broken_fill_is_rejected():
    template, variables = defaults()
    variables["finished_job_ttl"] = "an hour"
    job = filled(template["job_configuration"]["job_manifest"], variables)
    job["metadata"]["name"] = "agentic-mlops-flow-x"
    with pytest.raises((ManifestError, ValueError)):
        validate_manifest(job, "1.37")
